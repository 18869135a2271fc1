//! `userrl serve`: the web app, the JSON API and the job manager in one process (see `crate::serve`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;

use crate::serve::ServeOptions;

#[derive(clap::Args)]
pub struct Args {
    /// Where to listen. The default is loopback only: the mutating API routes have no auth yet.
    #[arg(long, env = "USERRL_ADDR", default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// `sqlite://PATH` or `postgres://USER:PASS@HOST/DB` (default: sqlite at <project root>/data/userrl.db).
    #[arg(long, env = "DATABASE_URL")]
    database: Option<String>,
    /// Do not start configs/quickstart.toml when the database has no runs.
    #[arg(long)]
    no_demo: bool,
    /// Checkpoints go to <runs-dir>/<run id>/ (default: <project root>/runs).
    #[arg(long, env = "USERRL_RUNS_DIR")]
    runs_dir: Option<PathBuf>,
    /// A model to serve on the OpenAI-compatible /v1 endpoint: `PATH` or `NAME=PATH` (a .gguf file or a
    /// checkpoint directory); repeat for several. `USERRL_API_KEY` makes /v1 require a bearer key.
    #[arg(long = "model", value_name = "[NAME=]PATH")]
    models: Vec<String>,
    /// Jobs running at once; the others wait in the queue.
    #[arg(long, default_value_t = 1)]
    max_jobs: usize,
}

pub fn run(args: Args) -> Result<()> {
    let options = ServeOptions {
        addr: args.addr,
        database: args.database.filter(|d| !d.trim().is_empty()),
        demo: !args.no_demo,
        models: args.models,
        runs_dir: args.runs_dir,
        max_jobs: args.max_jobs,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(crate::serve::run(options))
}
