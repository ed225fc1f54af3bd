//! Rooms with cores: a `lobby` core pairs the players who join it, and
//! spawns one `match` core per game, wherever the cluster has room.
//!
//! ```text
//! cargo run --example rooms -- --allow-anonymous
//! ```
//!
//! A client `join`s core `lobby` (any client may first ask `open_lobby` to
//! make sure it runs). When two players wait, the lobby tells both
//! `matched` `{"match": ID}`; they `join` that match core and `tell` it
//! `point`. Every point is broadcast as `score`; the first to 3 wins, the
//! match says `won` and stops. Matches save their score as a snapshot, so a
//! match whose instance dies comes back with its score.

use scaled_sockets::{App, CommandError, Context, Core, CoreContext, Data};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;

const LOBBY: &str = "lobby";
const WINNING_SCORE: u32 = 3;

/// Pairs waiting players and spawns a match for each pair.
#[derive(Default)]
struct Lobby {
    waiting: Vec<String>,
    matches: u64,
}

#[scaled_sockets::async_trait]
impl Core for Lobby {
    async fn join(
        &mut self,
        cx: &CoreContext,
        member: &str,
        _data: Data,
    ) -> Result<Data, CommandError> {
        self.waiting.push(member.to_owned());
        if self.waiting.len() >= 2 {
            let players: Vec<String> = self.waiting.drain(..2).collect();
            self.matches += 1;
            // Unique across lobby restarts: the lobby's tenure is part of it.
            let id = format!("match-{}-{}", cx.token(), self.matches);
            let params = Data::json(&json!({ "players": players }))?;
            cx.spawn_core("match", &id, &params).await?;
            let matched = Data::json(&json!({ "match": id }))?;
            for player in &players {
                // The joining player is not a member yet: it learns from the reply.
                if player != member {
                    cx.tell(player, "matched", &matched)?;
                }
            }
            return Ok(matched);
        }
        Data::json(&json!({ "waiting": true }))
    }

    async fn leave(&mut self, _cx: &CoreContext, member: &str) {
        self.waiting.retain(|p| p != member);
    }
}

#[derive(Deserialize)]
struct MatchParams {
    players: Vec<String>,
}

#[derive(Default, Serialize, Deserialize)]
struct Score {
    points: BTreeMap<String, u32>,
}

/// One game between two players: first to [`WINNING_SCORE`] points.
#[derive(Default)]
struct Match {
    players: Vec<String>,
    score: Score,
}

#[scaled_sockets::async_trait]
impl Core for Match {
    async fn start(
        &mut self,
        _cx: &CoreContext,
        params: Data,
        snapshot: Option<Data>,
    ) -> Result<(), CommandError> {
        self.players = params.parse::<MatchParams>()?.players;
        if let Some(snapshot) = snapshot {
            self.score = snapshot.parse()?;
        }
        Ok(())
    }

    async fn join(
        &mut self,
        _cx: &CoreContext,
        member: &str,
        _data: Data,
    ) -> Result<Data, CommandError> {
        if !self.players.iter().any(|p| p == member) {
            return Err(CommandError::forbidden("you do not play in this match"));
        }
        Data::json(&self.score)
    }

    async fn tell(&mut self, cx: &CoreContext, member: &str, event: &str, _data: Data) {
        if event != "point" || !self.players.iter().any(|p| p == member) {
            return;
        }
        let points = self.score.points.entry(member.to_owned()).or_insert(0);
        *points += 1;
        let won = *points >= WINNING_SCORE;
        let Ok(score) = Data::json(&self.score) else {
            return;
        };
        if let Err(e) = cx.save_snapshot(&score).await {
            tracing::warn!(error = %e, "score not saved");
        }
        let _ = cx.broadcast("score", &score);
        if won {
            if let Ok(winner) = Data::json(&json!({ "winner": member })) {
                let _ = cx.broadcast("won", &winner);
            }
            cx.stop();
        }
    }
}

/// Makes sure the lobby runs; replies where.
async fn open_lobby(cx: Context, _data: Data) -> Result<Data, CommandError> {
    let instance = cx.sockets.spawn_core("lobby", LOBBY, &Data::null()).await?;
    Data::json(&json!({ "core": LOBBY, "instance": instance }))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let app = App::new()
        .ask("open_lobby", open_lobby)
        .core("lobby", Lobby::default)
        .core("match", Match::default);
    scaled_sockets::cli::run(app).await
}
