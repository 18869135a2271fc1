//! The /v1 API through a real TCP listener: a tiny random model (exact against `generate`, every bad-input
//! case, auth) and SmolLM2 (plain, streamed and tool-calling answers, the `openai` Python client, and the
//! gyms' LLM user played by our own model).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde_json::{Value, json};
use userrl_nn::checkpoint::random_model;
use userrl_nn::generate::{Sampling, generate};
use userrl_nn::model::LlamaConfig;
use userrl_nn::tokenizer::{ChatMessage, Tokenizer};

use super::prompt::{self, Deltas, ToolMode};
use super::wire::WireMessage;
use super::*;

/// Three ChatML specials and the 256 byte-level symbols.
fn tiny_tokenizer() -> Tokenizer {
    crate::test_support::byte_tokenizer(&[])
}

fn tiny_model() -> Llama {
    let config = LlamaConfig {
        vocab: 259,
        hidden: 16,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        ffn: 24,
        rope_theta: 10_000.0,
        eps: 1e-5,
        context: 512,
    };
    random_model(config, false, 5)
}

fn tiny_state(key: Option<&str>) -> OpenAiState {
    let state = OpenAiState::new(key.map(String::from));
    state.add_loaded("tiny", tiny_model(), tiny_tokenizer(), "random").unwrap();
    state
}

fn smollm2_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/setup", path.display());
    path
}

const SMOL: &str = "smollm2";

/// One SmolLM2 engine for every test (each test runs its own HTTP server over it).
fn smollm2_state() -> OpenAiState {
    static STATE: OnceLock<OpenAiState> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let state = OpenAiState::new(None);
            state.add_model(SMOL, &smollm2_path()).unwrap();
            state
        })
        .clone()
}

/// Serves `state` on a free local port; returns the base URL (without `/v1`).
async fn serve(state: OpenAiState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    format!("http://{addr}")
}

async fn post(base: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new().post(format!("{base}/v1/chat/completions")).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

/// The `data:` payloads of an SSE body, in order.
async fn post_stream(base: &str, body: &Value) -> Vec<String> {
    let response = reqwest::Client::new().post(format!("{base}/v1/chat/completions")).json(body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let text = response.text().await.unwrap();
    text.lines().filter_map(|l| l.strip_prefix("data: ")).map(String::from).collect()
}

/// Content, finish reason, tool calls and usage gathered from streamed chunks; checks the chunk order.
fn gather_stream(data: &[String]) -> (String, String, Vec<Value>, Option<Value>) {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (mut content, mut finish, mut calls, mut usage) = (String::new(), String::new(), Vec::new(), None);
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert!(finish.is_empty() || c["choices"].as_array().unwrap().is_empty(), "a chunk after the finish");
        if let Some(u) = c.get("usage").filter(|u| !u.is_null()) {
            usage = Some(u.clone());
        }
        let Some(choice) = c["choices"].get(0) else { continue };
        content.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
        calls.extend(choice["delta"]["tool_calls"].as_array().cloned().unwrap_or_default());
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (content, finish, calls, usage)
}

fn assert_error(status: u16, body: &Value, want_status: u16, needle: &str) {
    assert_eq!(status, want_status, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message: {body}"));
    assert!(message.contains(needle), "`{message}` lacks `{needle}`");
    assert!(body["error"]["type"].is_string());
}

/// On a GPU state the reply is the GPU model's own `generate`, and /v1/models names the adapter; under `auto` a
/// model the kernels refuse is served on the CPU, and under `wgpu` it is refused.
#[tokio::test]
async fn a_gpu_state_serves_through_the_wgpu_engine() {
    let device = userrl_nn::wgpu::Device::wgpu().expect("the wgpu tests need an adapter (run scripts/setup)");
    let state = OpenAiState::serving_on(None, ServingDevice { device: Some(device.clone()), cpu_fallback: false });
    state.add_loaded("tiny", tiny_model(), tiny_tokenizer(), "random").unwrap();
    let base = serve(state.clone()).await;
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0,
                      "max_tokens": 12});
    let (status, plain) = post(&base, &body).await;
    assert_eq!(status, 200, "{plain}");
    let served = state.model("tiny").unwrap();
    assert_ne!(served.device, "cpu");
    let text = served.tokenizer.render_chat(&[ChatMessage::new("user", "hi")], true).unwrap();
    let ids = served.tokenizer.encode(&text).unwrap();
    let sampling = Sampling { max_new_tokens: 12, ..Sampling::default() };
    let gpu = userrl_nn::wgpu::WgpuLlama::new(&device, &tiny_model()).unwrap();
    let want = userrl_nn::generate::generate_with(&gpu, &ids, &served.stop, &sampling).unwrap();
    let visible: Vec<u32> = want.tokens.iter().copied().filter(|t| !served.stop.contains(t)).collect();
    assert_eq!(plain["choices"][0]["message"]["content"], served.tokenizer.decode(&visible).unwrap());
    let listed = reqwest::get(format!("{base}/v1/models")).await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(listed["data"][0]["device"], served.device.as_str());
    // The setting's values; anything else is refused by name.
    assert!(parse_serving_device("cpu").unwrap().device.is_none());
    assert!(parse_serving_device(" ").unwrap().device.is_none());
    assert!(parse_serving_device("auto").unwrap().cpu_fallback);
    let err = parse_serving_device("cuda").err().unwrap().to_string();
    assert!(err.contains("USERRL_SERVE_DEVICE") && err.contains("cuda"), "{err}");

    // hidden 18 is not a multiple of 4: the wgpu kernels refuse the model, the CPU runs it.
    let odd = || random_model(LlamaConfig { hidden: 18, heads: 3, kv_heads: 1, ..tiny_model().config }, false, 6);
    let strict = OpenAiState::serving_on(None, ServingDevice { device: Some(device.clone()), cpu_fallback: false });
    let err = format!("{:#}", strict.add_loaded("odd", odd(), tiny_tokenizer(), "random").unwrap_err());
    assert!(err.contains("GPU") && err.contains("multiples of 4"), "{err}");
    assert!(strict.model("odd").is_none());
    let auto = OpenAiState::serving_on(None, ServingDevice { device: Some(device), cpu_fallback: true });
    auto.add_loaded("odd", odd(), tiny_tokenizer(), "random").unwrap();
    assert_eq!(auto.model("odd").unwrap().device, "cpu");
    let base = serve(auto).await;
    let body = json!({"model": "odd", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    let (status, reply) = post(&base, &body).await;
    assert_eq!(status, 200, "{reply}");
}

/// The reply of the tiny model over HTTP is exactly `generate`'s on the rendered prompt, plain and streamed (the
/// second time from the prefix store).

#[tokio::test]
async fn tiny_model_plain_and_streamed_equal_generate() {
    let state = tiny_state(None);
    let base = serve(state.clone()).await;
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0,
                      "max_tokens": 20, "stream_options": {"include_usage": true}});
    let (status, plain) = post(&base, &body).await;
    assert_eq!(status, 200, "{plain}");

    let served = state.model("tiny").unwrap();
    let tokenizer = &served.tokenizer;
    let text = tokenizer.render_chat(&[ChatMessage::new("user", "hi")], true).unwrap();
    let ids = tokenizer.encode(&text).unwrap();
    let sampling = Sampling { max_new_tokens: 20, ..Sampling::default() };
    let want = generate(&tiny_model(), &ids, &served.stop, &sampling).unwrap();
    let visible: Vec<u32> = want.tokens.iter().copied().filter(|t| !served.stop.contains(t)).collect();
    let choice = &plain["choices"][0];
    assert_eq!(choice["message"]["content"], tokenizer.decode(&visible).unwrap());
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], if want.stopped { "stop" } else { "length" });
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(plain["model"], "tiny");
    assert_eq!(plain["usage"]["prompt_tokens"], ids.len());
    assert_eq!(plain["usage"]["completion_tokens"], want.tokens.len());
    assert_eq!(plain["usage"]["total_tokens"], ids.len() + want.tokens.len());

    let mut body = body;
    body["stream"] = json!(true);
    let (content, finish, calls, usage) = gather_stream(&post_stream(&base, &body).await);
    assert_eq!(content, choice["message"]["content"].as_str().unwrap());
    assert_eq!(finish, choice["finish_reason"].as_str().unwrap());
    assert!(calls.is_empty());
    // The same prompt again: the engine's prefix store supplies all of it but the last token, the reply is the
    // same, and OpenAI's `cached_tokens` says so.
    assert_eq!(plain["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let mut want_usage = plain["usage"].clone();
    want_usage["prompt_tokens_details"]["cached_tokens"] = json!(ids.len() - 1);
    assert_eq!(usage.unwrap(), want_usage);
}

#[tokio::test]
async fn models_are_listed() {
    let base = serve(tiny_state(None)).await;
    let list: Value = reqwest::get(format!("{base}/v1/models")).await.unwrap().json().await.unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], "tiny");
    assert_eq!(list["data"][0]["object"], "model");
    let one = reqwest::get(format!("{base}/v1/models/tiny")).await.unwrap();
    assert_eq!(one.status().as_u16(), 200);
    let missing = reqwest::get(format!("{base}/v1/models/nope")).await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
}

/// Bad input is a 4xx in OpenAI's error shape, never a 5xx or a dropped connection.
#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let base = serve(tiny_state(None)).await;
    let user = json!([{"role": "user", "content": "hi"}]);
    let raw = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let status = raw.status().as_u16();
    assert_error(status, &raw.json().await.unwrap(), 400, "could not parse the JSON");
    let cases = [
        (json!({"messages": user}), 400, "`model` is required"),
        (json!({"model": "gpt-9", "messages": user}), 404, "does not exist"),
        (json!({"model": "tiny"}), 400, "`messages` is required"),
        (json!({"model": "tiny", "messages": []}), 400, "must not be empty"),
        (json!({"model": "tiny", "messages": "hi"}), 400, "could not parse"),
        (json!({"model": "tiny", "messages": user, "n": 2}), 400, "`n`"),
        (json!({"model": "tiny", "messages": user, "temperature": 3}), 400, "temperature"),
        (json!({"model": "tiny", "messages": user, "top_p": 0}), 400, "top_p"),
        (json!({"model": "tiny", "messages": user, "max_tokens": 0}), 400, "max_tokens"),
        (json!({"model": "tiny", "messages": user, "max_tokens": 100_000}), 400, "maximum context length"),
        (json!({"model": "tiny", "messages": [{"role": "user", "content": "x".repeat(600)}]}), 400, "maximum context"),
        (json!({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}), 400, "unknown role"),
        (json!({"model": "tiny", "messages": [{"role": "user", "content": 7}]}), 400, "content"),
        (json!({"model": "tiny", "messages": user, "stop": [1]}), 400, "stop"),
        (json!({"model": "tiny", "messages": user, "tool_choice": "required"}), 400, "needs `tools`"),
        (json!({"model": "tiny", "messages": user, "tools": [{"type": "function"}]}), 400, "tools[0]"),
        (
            json!({"model": "tiny", "messages": user, "tools": [weather_tool()],
                   "tool_choice": {"type": "function", "function": {"name": "other"}}}),
            400,
            "not in `tools`",
        ),
        (
            json!({"model": "tiny", "messages": [{"role": "assistant", "tool_calls": [{"type": "function",
                   "function": {"name": "f", "arguments": "{oops"}}]}]}),
            400,
            "not JSON",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, reply) = post(&base, &body).await;
        assert_error(got, &reply, status, needle);
    }
    // A too-long prompt is flagged as such.
    let (_, reply) =
        post(&base, &json!({"model": "tiny", "messages": [{"role": "user", "content": "x".repeat(600)}]})).await;
    assert_eq!(reply["error"]["code"], "context_length_exceeded");
}

#[tokio::test]
async fn api_key_is_required_when_set() {
    let base = serve(tiny_state(Some("sekrit"))).await;
    let client = reqwest::Client::new();
    let models = format!("{base}/v1/models");
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(client.get(&models).send().await.unwrap()), 401);
    assert_eq!(status(client.get(&models).bearer_auth("wrong").send().await.unwrap()), 401);
    let denied = client.post(format!("{base}/v1/chat/completions")).json(&json!({})).send().await.unwrap();
    assert_eq!(denied.status().as_u16(), 401);
    assert_eq!(denied.json::<Value>().await.unwrap()["error"]["code"], "invalid_api_key");
    assert_eq!(status(client.get(&models).bearer_auth("sekrit").send().await.unwrap()), 200);
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let ok = client.post(format!("{base}/v1/chat/completions")).bearer_auth("sekrit").json(&body).send().await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
}

fn messages(v: Value) -> Vec<WireMessage> {
    serde_json::from_value(v).unwrap()
}

/// Tools go into the system turn, history calls and results in Hermes blocks; a named choice opens the call.
#[test]
fn tools_and_tool_turns_render_hermes_style() {
    let tokenizer = tiny_tokenizer();
    let history = messages(json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "rain"}]},
    ]));
    let tools = [weather_tool()];
    let mode =
        prompt::tool_mode(&tools, &Some(json!({"type": "function", "function": {"name": "get_weather"}}))).unwrap();
    assert_eq!(mode, ToolMode::Named("get_weather".into()));
    let plan = prompt::plan(&tokenizer, &history, &tools, &mode).unwrap();
    let text = tokenizer.decode(&plan.tokens).unwrap();
    assert!(text.starts_with("<|im_start|>system\nBe brief.\n\n# Tools\n"), "{text}");
    assert!(text.contains(&format!("<tools>\n{}\n</tools>", weather_tool())), "{text}");
    assert!(
        text.contains(
            "<tool_call>\n{\"arguments\":{\"city\":\"Paris\"},\"name\":\"get_weather\"}\n</tool_call>\n<tool_call>"
        ),
        "{text}"
    );
    assert!(text.contains("<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response><|im_end|>"), "{text}");
    assert!(
        text.ends_with("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "),
        "{text}"
    );
    assert!(plan.tools_on);

    // tool_choice none leaves the tools out; no tools means no tool section.
    let plain = prompt::plan(&tokenizer, &history[..2], &tools, &ToolMode::Off).unwrap();
    assert!(!tokenizer.decode(&plain.tokens).unwrap().contains("# Tools"));
    assert_eq!(prompt::tool_mode(&[], &None).unwrap(), ToolMode::Off);
    assert_eq!(prompt::tool_mode(&tools, &None).unwrap(), ToolMode::Auto);
    assert_eq!(prompt::tool_mode(&tools, &Some(json!("none"))).unwrap(), ToolMode::Off);
}

#[test]
fn replies_become_tool_calls() {
    let text =
        "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let reply = prompt::parse_reply(text, true);
    assert_eq!(reply.content.as_deref(), Some("Let me check."));
    assert_eq!(reply.calls, vec![("get_weather".to_string(), "{\"city\":\"Paris\"}".to_string())]);
    // Tools off: the block is text. A malformed block stays text.
    assert_eq!(prompt::parse_reply(text, false).calls, vec![]);
    let broken = prompt::parse_reply("<tool_call>{oops</tool_call>", true);
    assert_eq!((broken.content.as_deref(), broken.calls.len()), (Some("<tool_call>{oops</tool_call>"), 0));
}

/// Streaming never sends text past a stop string or inside a tool call, even when the marker arrives split.
#[test]
fn deltas_hold_back_markers() {
    let mut d = Deltas::new(vec!["END".into()], true);
    let pieces = ["Hel", "lo E", "N", "D and more"];
    let mut text = String::new();
    let mut sent = String::new();
    let mut stopped = None;
    for p in pieces {
        text.push_str(p);
        let step = d.step(&text, false);
        sent.push_str(&step.delta);
        if step.stopped_at.is_some() {
            stopped = step.stopped_at;
            break;
        }
    }
    assert_eq!((sent.as_str(), stopped), ("Hello ", Some(6)));

    let mut d = Deltas::new(Vec::new(), true);
    let mut sent = String::new();
    let mut text = String::new();
    for p in ["Sure <", "tool", "_call>{\"name\"", "..."] {
        text.push_str(p);
        sent.push_str(&d.step(&text, false).delta);
    }
    assert_eq!(sent, "Sure ");
    // Without tools a `<` is just text; at the end, the held-back tail goes out.
    let mut d = Deltas::new(Vec::new(), false);
    assert_eq!(d.step("a <tool", false).delta, "a <tool");
    let mut d = Deltas::new(vec!["STOP".into()], false);
    assert_eq!(d.step("x ST", false).delta, "x ");
    assert_eq!(d.step("x ST", true).delta, "ST");
}

#[test]
fn model_names_come_from_paths() {
    assert_eq!(parse_model_arg("models/SmolLM2-135M-Instruct.Q4_1.gguf").0, "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(parse_model_arg("runs/quick/final").0, "final");
    assert_eq!(parse_model_arg("runs/quick/final/model.safetensors").0, "final");
    assert_eq!(parse_model_arg("agent=runs/quick/final"), ("agent".to_string(), PathBuf::from("runs/quick/final")));
    assert!(OpenAiState::load(&["missing/nothing.gguf".into()]).is_err());
    let state = tiny_state(None);
    assert!(state.add_loaded("tiny", tiny_model(), tiny_tokenizer(), "again").is_err());
    assert!(state.remove_model("tiny"));
    assert!(state.model_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_answers_plain_streamed_and_with_tools() {
    let base = serve(smollm2_state()).await;
    let question = json!([{"role": "user", "content": "What is the capital of France?"}]);
    let body = json!({"model": SMOL, "messages": question, "temperature": 0, "max_tokens": 16});
    let (status, plain) = post(&base, &body).await;
    assert_eq!(status, 200, "{plain}");
    let answer = plain["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(answer.contains("Paris"), "{answer}");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (content, finish, _, usage) = gather_stream(&post_stream(&base, &streamed).await);
    assert_eq!(content, answer);
    assert_eq!(finish, plain["choices"][0]["finish_reason"].as_str().unwrap());
    assert!(usage.is_none(), "usage only when asked for");

    // A named tool choice: the call comes back as `tool_calls`, plain and streamed.
    let ask = json!({"model": SMOL, "temperature": 0, "max_tokens": 40, "tools": [weather_tool()],
                     "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                     "messages": [{"role": "user", "content": "What is the weather like in Paris today?"}]});
    let (status, reply) = post(&base, &ask).await;
    assert_eq!(status, 200, "{reply}");
    let choice = &reply["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{reply}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!((call["type"].as_str(), call["function"]["name"].as_str()), (Some("function"), Some("get_weather")));
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments.is_object(), "{arguments}");
    let mut ask_streamed = ask.clone();
    ask_streamed["stream"] = json!(true);
    let (_, finish, calls, _) = gather_stream(&post_stream(&base, &ask_streamed).await);
    assert_eq!(finish, "tool_calls");
    assert_eq!(calls[0]["function"], call["function"]);
    assert_eq!(calls[0]["index"], 0);
}

/// A stop string ends the reply where it appears (SmolLM2 says "Paris" when asked for the capital).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_stop_strings_cut_the_reply() {
    let base = serve(smollm2_state()).await;
    let body = json!({"model": SMOL, "temperature": 0, "max_tokens": 16, "stop": ["Paris"],
                      "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let (status, reply) = post(&base, &body).await;
    assert_eq!(status, 200, "{reply}");
    let content = reply["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.contains("Paris") && !content.is_empty(), "{content}");
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (text, finish, _, _) = gather_stream(&post_stream(&base, &streamed).await);
    assert_eq!((text.as_str(), finish.as_str()), (content, "stop"));
}

/// The official `openai` Python client (plain, streamed, tools) against our server, when it is installed
/// (`scripts/setup` installs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_works() {
    let has_client =
        std::process::Command::new("python3").args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success());
    if !has_client {
        eprintln!("the `openai` Python package is not installed (scripts/setup installs it): client test not run");
        return;
    }
    let base = serve(smollm2_state()).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3").arg(script).arg(format!("{base}/v1")).arg(SMOL).output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("plain ok") && stdout.contains("stream ok") && stdout.contains("tools ok"), "{stdout}");
}

/// The gyms' LLM user played by our own model through the /v1 API: an expert agent plays a Telepathy episode
/// to the end, and the user's answers are the model's, not the gym's fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gym_llm_user_runs_on_our_own_model() {
    use userrl_gym::env::EnvConfig;
    use userrl_gym::eval::run_episode;
    use userrl_gym::llm::{LlmClient, LlmConfig, LlmUser};
    use userrl_gym::split::Split;
    use userrl_gym::{Catalog, GymKind};

    let base = serve(smollm2_state()).await;
    let config = LlmConfig {
        base_urls: vec![format!("{base}/v1")],
        model: SMOL.into(),
        max_tokens: 64,
        timeout_ms: 120_000,
        max_tries: 1,
        json_mode: true,
        ..LlmConfig::default()
    };
    let client = Arc::new(LlmClient::new(config).unwrap());
    let user = Arc::new(LlmUser::new(client.clone()));
    let catalog = Catalog::builtin(&[GymKind::Telepathy]).unwrap();
    let gym = catalog.get(GymKind::Telepathy).unwrap().clone();
    let task = gym.task_ids(Some(Split::Test))[0].clone();
    let mut agent = gym.expert(&task, 0).unwrap();
    let transcript = run_episode(gym.as_ref(), &task, agent.as_mut(), user, &EnvConfig::default()).await.unwrap();
    assert!(transcript.score.is_finite() && (0.0..=1.0).contains(&transcript.normalized), "{transcript:?}");
    assert!(!transcript.turns.is_empty());
    let requests = client.stats.requests.load(std::sync::atomic::Ordering::Relaxed);
    let failures = client.stats.failures.load(std::sync::atomic::Ordering::Relaxed);
    assert!(requests > 0 && failures == 0, "{requests} requests, {failures} failed");
    for turn in &transcript.turns {
        assert!(!turn.feedback.starts_with("Unable to"), "a fallback reply: {}", turn.feedback);
    }
}

/// `response_format` json_object constrains even a random model to JSON: a finished reply parses, a cut one is
/// a valid start of an object.
#[tokio::test]
async fn json_mode_replies_are_json() {
    let base = serve(tiny_state(None)).await;
    for seed in 0..4 {
        let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "json please"}], "seed": seed,
                          "max_tokens": 120, "response_format": {"type": "json_object"}});
        let (status, reply) = post(&base, &body).await;
        assert_eq!(status, 200, "{reply}");
        let content = reply["choices"][0]["message"]["content"].as_str().unwrap();
        let mut prefix = super::json::JsonPrefix::default();
        assert!(prefix.feed_all(content.as_bytes()), "{content}");
        if reply["choices"][0]["finish_reason"] == "stop" {
            assert!(serde_json::from_str::<Value>(content).is_ok_and(|v| v.is_object()), "{content}");
        }
    }
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                      "response_format": {"type": "json_schema", "json_schema": {}}});
    let (status, reply) = post(&base, &body).await;
    assert_error(status, &reply, 400, "json_schema");
}
