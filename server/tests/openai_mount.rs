//! `userrl_server::openai::mount` as `userrl serve --model` uses it: a `name=path` model loaded from its GGUF file
//! and served beside the rest of the site through a real TCP listener; a bad path is an error at start-up.

use std::path::PathBuf;

use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_serves_a_gguf_beside_other_routes() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/setup", path.display());
    let site = Router::new().route("/health", get(|| async { "ok" }));
    let app = userrl_server::openai::mount(site, &[format!("smol={}", path.display())]).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("{base}/health")).send().await.unwrap().text().await.unwrap(), "ok");
    let models: Value = client.get(format!("{base}/v1/models")).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["data"][0]["id"], "smol");
    let body = json!({"model": "smol", "temperature": 0, "max_tokens": 12,
                      "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let reply: Value =
        client.post(format!("{base}/v1/chat/completions")).json(&body).send().await.unwrap().json().await.unwrap();
    let content = reply["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    assert!(content.contains("Paris"), "{reply}");

    let missing = userrl_server::openai::mount(Router::new(), &["nothing/here.gguf".into()]).await;
    let message = format!("{:#}", missing.err().unwrap());
    assert!(message.contains("nothing/here.gguf"), "{message}");
}
