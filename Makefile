# The two commands of the README. Both run scripts/setup first, so a fresh machine needs nothing else.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
export CARGO_TERM_COLOR := never

.PHONY: setup run test lint fmt build site site-release e2e

setup:
	@scripts/setup

build: setup
	cargo build --release

# The web app at http://127.0.0.1:3000 (on an empty database the quickstart run starts; see README).
run: build
	scripts/build-site --release
	"$${CARGO_TARGET_DIR:-target}/release/userrl" serve

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# wgpu tests run on Vulkan (lavapipe without a GPU); XDG_RUNTIME_DIR silences the windowing probes. Tests run in
# parallel (the page-render hang under parallel tests is fixed: see `app_routes` in app/src/server.rs).
test: lint
	mkdir -p -m700 /tmp/xdg-$$(id -u)
	WGPU_BACKEND=$${WGPU_BACKEND:-vulkan} XDG_RUNTIME_DIR=/tmp/xdg-$$(id -u) cargo test --workspace
	scripts/test-postgres cargo test -p userrl-store
	scripts/e2e

# The web app's browser side into target/<debug|release>/site: debug for tests, release (lto, wasm-opt) for `make run`.
site: setup
	scripts/build-site

site-release: setup
	scripts/build-site --release

# Browser tests only (Playwright + Chromium against a real short run); part of `make test`.
e2e: setup
	scripts/e2e

fmt:
	cargo fmt --all
