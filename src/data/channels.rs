//! A data file's channel record, `DATA.channels.json` beside `DATA.npy` (docs/data.md, “Channel
//! names”): the generators write it; `sample --png` and `eval` read the one beside their input or
//! truth to name the channels (`u`, `v`; `p_x`, `p_y`, `q_x`, `q_y`) and to picture a position
//! channel as its displacement from the node's place in the mesh.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file's key that holds the channels.
const KEY: &str = "channels";

/// One channel of a data file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    /// The channel's name in the field's terms (`u`, `q_x`).
    pub name: String,
    /// For a position on a node grid: the grid coordinate of the node's place at rest, which a
    /// picture subtracts to show the displacement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<Rest>,
}

/// The rest position of a node-grid position channel, in grid units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rest {
    /// The node's column `x` (a horizontal position).
    Column,
    /// The node's row `y` (a vertical position).
    Row,
}

impl Channel {
    fn named(name: &str) -> Channel {
        Channel {
            name: name.to_string(),
            rest: None,
        }
    }

    /// The value at rest of pixel `(y, x)`: the node's column or row, 0 for other channels.
    pub fn rest_value(&self, y: usize, x: usize) -> f32 {
        match self.rest {
            None => 0.0,
            Some(Rest::Column) => x as f32,
            Some(Rest::Row) => y as f32,
        }
    }
}

/// The channels of `dydiff data navier-stokes`: the velocity `u`, `v`.
pub fn navier_stokes() -> Vec<Channel> {
    vec![Channel::named("u"), Channel::named("v")]
}

/// The channels of `dydiff data spring-mesh`: the momentum `p_x`, `p_y` and the position `q_x`
/// (at rest the node's column), `q_y` (its row).
pub fn spring_mesh() -> Vec<Channel> {
    let mut c = vec![
        Channel::named("p_x"),
        Channel::named("p_y"),
        Channel::named("q_x"),
        Channel::named("q_y"),
    ];
    c[2].rest = Some(Rest::Column);
    c[3].rest = Some(Rest::Row);
    c
}

/// Channels without a record: `C0, C1, …`.
pub fn numbered(count: usize) -> Vec<Channel> {
    (0..count)
        .map(|c| Channel::named(&format!("C{c}")))
        .collect()
}

/// Where the channel record of `data` lies: `DATA.channels.json` for `DATA.npy` (or `.npz`).
pub fn record_path(data: &Path) -> PathBuf {
    data.with_extension("channels.json")
}

/// The record's bytes for `generator` (the `dydiff data` subcommand) and its channels.
pub fn encode(generator: &str, channels: &[Channel]) -> Vec<u8> {
    let v = serde_json::json!({ "generator": generator, KEY: channels });
    serde_json::to_string_pretty(&v)
        .expect("the record serialises")
        .into_bytes()
}

/// The channels recorded beside `data`, which holds `count` channels: `None` when there is no
/// record. Errors: a record that is not JSON, lacks the channel list, or names another number of
/// channels (a record left from another file), each naming the record.
pub fn read(data: &Path, count: usize) -> Result<Option<Vec<Channel>>> {
    let path = record_path(data);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(&path, format!("expected JSON: {e}")))?;
    let list = v.get(KEY).cloned().ok_or_else(|| {
        Error::bad_file(
            &path,
            format!("expected an object with a \"{KEY}\" list, found {v}"),
        )
    })?;
    let channels: Vec<Channel> = serde_json::from_value(list).map_err(|e| {
        Error::bad_file(
            &path,
            format!("\"{KEY}\": expected a list of {{\"name\": …, \"rest\": \"column\" | \"row\" (optional)}}: {e}"),
        )
    })?;
    if channels.len() != count {
        return Err(Error::bad_file(
            &path,
            format!(
                "names {} channels, but {} holds {count}: the record belongs to another file (delete it, or generate the data again)",
                channels.len(),
                data.display()
            ),
        ));
    }
    Ok(Some(channels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back() {
        let dir = std::env::temp_dir().join(format!("dydiff-channels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("mesh.npy");
        assert_eq!(read(&data, 4).unwrap(), None);
        std::fs::write(record_path(&data), encode("spring-mesh", &spring_mesh())).unwrap();
        let c = read(&data, 4).unwrap().unwrap();
        assert_eq!(c, spring_mesh());
        assert_eq!(c[2].rest_value(3, 7), 7.0);
        assert_eq!(c[3].rest_value(3, 7), 3.0);
        assert_eq!(c[0].rest_value(3, 7), 0.0);
        let e = read(&data, 2).unwrap_err().to_string();
        assert!(
            e.contains("names 4 channels") && e.contains("holds 2"),
            "{e}"
        );
        std::fs::write(record_path(&data), "{\"channels\": [{\"name\": 3}]}").unwrap();
        let e = read(&data, 1).unwrap_err().to_string();
        assert!(e.contains("mesh.channels.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
