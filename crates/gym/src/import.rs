//! Import of the original UserRL task files (reference §3.5 and §4): the per-gym JSON files under
//! `tasks/<Gym>/` and the parquet records under `parquet/<name>/{train,test}.parquet`, converted to this
//! project's JSONL task format. Each gym module converts its own records; this module finds the files and
//! reads parquet rows as JSON.

use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::Value;

use crate::gyms::{GymError, GymKind};

fn io_error(path: &Path, e: impl std::fmt::Display) -> GymError {
    GymError::Io { path: path.display().to_string(), message: e.to_string() }
}

/// Every row of a parquet file as a JSON object (nested lists and structs included).
pub fn read_parquet_rows(path: &Path) -> Result<Vec<Value>, GymError> {
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| io_error(path, e))?;
    let rows = reader.get_row_iter(None).map_err(|e| io_error(path, e))?;
    rows.map(|row| row.map(|r| r.to_json_value()).map_err(|e| io_error(path, e))).collect()
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Result<Value, GymError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    serde_json::from_str(&text).map_err(|e| io_error(path, e))
}

/// The ids listed in the `test` parquet file of one original gym, used to reproduce the original split:
/// `reward_model.id`, else `reward_model.title`.
pub fn parquet_ids(root: &Path, dataset: &str, split: &str) -> Result<Vec<String>, GymError> {
    let path = root.join("parquet").join(dataset).join(format!("{split}.parquet"));
    if !path.exists() {
        return Ok(Vec::new());
    }
    Ok(read_parquet_rows(&path)?
        .iter()
        .filter_map(|row| {
            let rm = &row["reward_model"];
            rm["id"].as_str().or_else(|| rm["title"].as_str()).map(str::to_string)
        })
        .collect())
}

/// Where an original gym's files live under the data root.
pub fn tasks_dir(root: &Path, kind: GymKind) -> PathBuf {
    root.join("tasks").join(kind.title())
}

/// The gyms whose original data is complete enough to import.
pub const IMPORTABLE: [GymKind; 6] =
    [GymKind::Function, GymKind::Telepathy, GymKind::Turtle, GymKind::Intention, GymKind::Search, GymKind::Tau];

/// Imports one gym from the original data at `root`, returning its tasks as JSONL lines.
pub fn import_gym(root: &Path, kind: GymKind) -> Result<Vec<Value>, GymError> {
    use crate::gyms::*;
    match kind {
        GymKind::Function => function::import_original(root),
        GymKind::Telepathy => telepathy::import_original(root),
        GymKind::Turtle => turtle::import_original(root),
        GymKind::Intention => intention::import_original(root),
        GymKind::Search => search::import_original(root),
        GymKind::Tau => tau::import_original(root),
        other => Err(GymError::Data {
            gym: other,
            location: root.display().to_string(),
            message: "the original data for this gym is not available (reference: userrl-data/README.md)".into(),
        }),
    }
}
