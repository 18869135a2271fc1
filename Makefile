# The two commands of the README. Both run scripts/setup first, so a fresh machine needs nothing else.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
export CARGO_TERM_COLOR := never

.PHONY: setup run test lint fmt build

setup:
	@scripts/setup

build: setup
	cargo build --release

# Until the web app lands, `run` shows the gyms and plays the experts over every test task.
run: build
	./target/release/userrl gyms
	./target/release/userrl eval --agent expert --gyms all --split test --user scripted

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

test: lint
	cargo test --workspace

fmt:
	cargo fmt --all
