//! The browser tests' harness (`scripts/e2e` runs it; not part of the product):
//! - `fill --db URL --config FILE --out DIR`: a real short training run written through `StoreSink`, plus
//!   one transcript whose text is an HTML/script injection attempt; prints the run id;
//! - `append --db URL --run ID --step N --key K --value V`: one metric point from another process, as a
//!   `userrl train` sharing the SQLite file would write it;
//! - `create --db URL --name NAME`: an empty running run (to compare with); prints its id.

use std::collections::HashMap;
use std::path::PathBuf;

use userrl_store::{NewRun, Store, StoreSink};
use userrl_types::{RunKind, RunStatus, Speaker, TranscriptMessage, TranscriptRecord};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The text the injection test looks for, rendered literally.
const PAYLOAD: &str = "<script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\">";

fn flags(args: &[String]) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let name = flag.strip_prefix("--").ok_or_else(|| format!("expected --flag, got {flag:?}"))?;
        let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
        out.insert(name.to_string(), value.clone());
    }
    Ok(out)
}

fn need<'a>(f: &'a HashMap<String, String>, name: &str) -> Result<&'a str> {
    f.get(name).map(String::as_str).ok_or_else(|| format!("missing --{name}").into())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        return Err("usage: e2e_harness fill|append|create --db URL ...".into());
    };
    let f = flags(rest)?;
    let store = Store::connect(need(&f, "db")?).await?;
    match command.as_str() {
        "fill" => fill(store, PathBuf::from(need(&f, "config")?), PathBuf::from(need(&f, "out")?)).await,
        "append" => {
            let run: i64 = need(&f, "run")?.parse()?;
            let step: i64 = need(&f, "step")?.parse()?;
            let value: f64 = need(&f, "value")?.parse()?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
            store.append_metrics(run, step, now, &[(need(&f, "key")?.to_string(), value)]).await?;
            Ok(())
        }
        "create" => {
            let id = store
                .create_run(&NewRun {
                    name: need(&f, "name")?.to_string(),
                    kind: RunKind::Train,
                    config: String::new(),
                    gyms: vec!["intention".into()],
                    model: "tiny".into(),
                    device: "cpu".into(),
                    total_steps: 0,
                })
                .await?;
            store.set_run_status(id, RunStatus::Running, "").await?;
            println!("{id}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}").into()),
    }
}

async fn fill(store: Store, config_path: PathBuf, out: PathBuf) -> Result<()> {
    let text = std::fs::read_to_string(&config_path)?;
    let config = userrl_rl::config::RunConfig::from_toml(&text)?;
    let grpo_steps = config.grpo.as_ref().map(|g| g.steps as i64).unwrap_or(0);
    let run_id = store
        .create_run(&NewRun {
            name: config.name.clone(),
            kind: RunKind::Train,
            config: text.clone(),
            gyms: config.data.gyms.iter().map(|g| g.name().to_string()).collect(),
            model: "tiny".into(),
            device: "cpu".into(),
            total_steps: grpo_steps,
        })
        .await?;
    store.set_run_status(run_id, RunStatus::Running, "").await?;
    let sink = StoreSink::new(store.clone(), run_id, tokio::runtime::Handle::current());
    let result = userrl_rl::train::run(&config, &out, &sink).await;
    sink.flush().await?;
    match result {
        Ok(_) => store.set_run_status(run_id, RunStatus::Finished, "").await?,
        Err(e) => {
            store.set_run_status(run_id, RunStatus::Failed, &e.to_string()).await?;
            return Err(e.into());
        }
    }
    let record = TranscriptRecord {
        gym: "intention".into(),
        task_id: "xss-probe".into(),
        reward: 0.5,
        termination: "answered".into(),
        turn_rewards: vec![0.5],
        messages: vec![
            TranscriptMessage { speaker: Speaker::User, text: PAYLOAD.into(), tokens: vec![], reward: None },
            TranscriptMessage {
                speaker: Speaker::Assistant,
                text: PAYLOAD.into(),
                tokens: vec![(PAYLOAD[..30].into(), 0.4), (PAYLOAD[30..].into(), -0.2)],
                reward: Some(0.5),
            },
        ],
        ..Default::default()
    };
    store.add_transcript(run_id, 999, 0, 0, true, &serde_json::to_value(&record)?).await?;
    println!("{run_id}");
    Ok(())
}
