//! The console's actions (docs/spec.md §7.1). Each handler reads its form
//! (the session and CSRF token already checked by [`PostForm`]), calls one
//! operation function, and redirects back with a flash message saying what
//! happened. The operations are the CLI's and the admin API's: the console
//! adds no logic of its own.
//!
//! Replay, its preview, discard, pause, resume and resync call
//! `crate::ops`, with the operator (`console:<name>`) as the actor.

use axum::extract::State;
use axum::response::Response;

use super::auth::PostForm;
use super::dead_letters::Params;
use super::form::{back_to, Fields};
use super::layout::redirect_with_flash;
use super::Console;
use crate::ops::{self, Actor};
use crate::store::dlq_groups::{GroupFilter, GroupKey};

/// Ids handed to one replay call (its filter binds them all).
const REPLAY_CHUNK: usize = 500;

/// Which dead letters an action is about.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Rows ticked on a page.
    Ids(Vec<i64>),
    /// Every open row a filter selects (one issue's only, with a key).
    Filter(GroupFilter, Option<GroupKey>),
}

impl Selection {
    /// The ticked ids if any, else the filter and issue the form carries.
    pub fn from_fields(f: &Fields) -> Result<Selection, String> {
        let ids = f
            .ids("id")
            .map_err(|v| format!("`{v}` is not a dead letter id"))?;
        if !ids.is_empty() {
            return Ok(Selection::Ids(ids));
        }
        let p = Params {
            stage: f.get("stage"),
            reason: f.get("reason"),
            record_type: f.get("record_type"),
            record_id: f.get("record_id"),
            since: f.get("since"),
            until: f.get("until"),
            group: f.get("group"),
            g_stage: f.get("g_stage"),
            g_reason: f.get("g_reason"),
            g_status: f.raw("g_status"),
            // An issue's key is matched exactly: read it as sent.
            g_msg: f.raw("g_msg"),
            page: None,
            after_id: None,
        };
        Ok(Selection::Filter(p.filter()?, p.key()))
    }

    /// The ids selected now, at most `max`.
    async fn ids(&self, c: &Console, max: i64) -> Result<Vec<i64>, String> {
        match self {
            Selection::Ids(ids) => Ok(ids.clone()),
            Selection::Filter(f, key) => c
                .store
                .dead_letter_group_ids(f, key.as_ref(), None, max)
                .await
                .map_err(|e| format!("the dead letters could not be read: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------
// Operations: each is one call to `crate::ops`, the CLI's and the admin
// API's implementation, with the operator as the actor.

fn actor(operator: &str) -> Actor {
    Actor(format!("console:{operator}"))
}

fn ops_selection(ids: Vec<i64>) -> ops::dlq::Selection {
    ops::dlq::Selection {
        ids,
        ..Default::default()
    }
}

/// Replays the selection through `ops::dlq::replay` (the CLI's `dlq
/// replay` and `POST /admin/dlq/replay`), audited with the operator.
pub async fn replay(c: &Console, sel: &Selection, operator: &str) -> Result<String, String> {
    let Some(publishers) = c.publishers.clone() else {
        return Err("Replay is not available on this server (no publisher).".into());
    };
    let ids = sel.ids(c, crate::dlq::MAX_BATCH).await?;
    if ids.is_empty() {
        return Ok("Nothing to replay: no open dead letter is selected.".into());
    }
    let (mut replayed, mut skipped, mut failed) = (0, 0, 0);
    for chunk in ids.chunks(REPLAY_CHUNK) {
        let r = ops::dlq::replay(
            &c.store,
            &publishers,
            &ops_selection(chunk.to_vec()),
            &actor(operator),
            false,
        )
        .await
        .map_err(|e| format!("The replay stopped: {e}"))?;
        replayed += r.replayed.len();
        skipped += r.skipped.len();
        failed += r.failed.len();
    }
    Ok(format!(
        "Replayed {replayed} dead letter(s); {skipped} skipped (already replayed or claimed), \
         {failed} failed to publish (still open)."
    ))
}

/// What a replay of the selection would cover: how many, which records,
/// which stages (targets) and reasons.
pub async fn preview_replay(c: &Console, sel: &Selection) -> Result<String, String> {
    let ids = sel.ids(c, crate::dlq::MAX_BATCH).await?;
    if ids.is_empty() {
        return Ok("Nothing would be replayed: no open dead letter is selected.".into());
    }
    let p = ops::dlq::preview(&c.store, &ops_selection(ids))
        .await
        .map_err(|e| format!("The preview failed: {e}"))?;
    let list = |m: &std::collections::BTreeMap<String, i64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let shown: Vec<&str> = p.records.iter().take(10).map(String::as_str).collect();
    let more = p.records_total - shown.len() as i64;
    Ok(format!(
        "Preview: a replay would send {} dead letter(s) of {} record(s) ({}{}) — stages: {}; reasons: {}.",
        p.count,
        p.records_total,
        shown.join(", "),
        if more > 0 { format!(" and {more} more") } else { String::new() },
        list(&p.stages),
        list(&p.reasons)
    ))
}

/// Discards the selection with a reason: kept, marked `discarded`, audited
/// with the operator and the reason, no longer alerted on.
pub async fn discard(
    c: &Console,
    sel: &Selection,
    reason: &str,
    operator: &str,
) -> Result<String, String> {
    let ids = sel.ids(c, crate::dlq::MAX_BATCH).await?;
    if ids.is_empty() {
        return Ok("Nothing to discard: no open dead letter is selected.".into());
    }
    let r = ops::dlq::discard(&c.store, &ids, &actor(operator), reason)
        .await
        .map_err(|e| format!("Nothing was discarded: {e}"))?;
    Ok(format!(
        "Discarded {} dead letter(s); {} left as they were.",
        r.changed.len(),
        r.unchanged.len()
    ))
}

/// Pauses a target on every replica (stored in the database).
pub async fn pause_target(
    c: &Console,
    target: &str,
    reason: &str,
    operator: &str,
) -> Result<String, String> {
    ops::targets::pause(&c.store, target, &actor(operator), reason)
        .await
        .map(|_| format!("{target} is paused on every replica: deliveries to it are held until it is resumed."))
        .map_err(|e| format!("{target} was not paused: {e}"))
}

/// Resumes a paused target.
pub async fn resume_target(c: &Console, target: &str, operator: &str) -> Result<String, String> {
    ops::targets::resume(&c.store, target, &actor(operator))
        .await
        .map(|_| format!("{target} is resumed: held deliveries go out now."))
        .map_err(|e| format!("{target} was not resumed: {e}"))
}

/// Sends each record's current routed state to the target as one signed
/// request (`X-Backbone-Resync: true`), audited with the operator.
pub async fn resync(
    c: &Console,
    target: &str,
    records: &[(String, String)],
    operator: &str,
) -> Result<String, String> {
    use std::str::FromStr;
    let source = crate::model::raw_event::Source::from_str(target)
        .map_err(|_| format!("`{target}` is not a target."))?;
    let Some(sink) = c.sinks.get(&source) else {
        return Err(format!("targets.{target}.url is not set on this server."));
    };
    let rows = ops::records::resync(&c.store, sink, source, records, &actor(operator))
        .await
        .map_err(|e| format!("Nothing was resynced: {e}"))?;
    let failed: Vec<String> = rows
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.record)))
        .collect();
    Ok(format!(
        "Resynced {} of {} record(s) to {target}{}",
        rows.len() - failed.len(),
        rows.len(),
        if failed.is_empty() {
            ".".to_string()
        } else {
            format!("; failed: {}", failed.join("; "))
        }
    ))
}

// ---------------------------------------------------------------------------
// Handlers: read the form, call one operation, go back with what happened.

fn done(fields: &Fields, default: &str, result: Result<String, String>) -> Response {
    let message = result.unwrap_or_else(|e| e);
    redirect_with_flash(&back_to(fields, default), &message)
}

pub async fn replay_handler(State(c): State<Console>, form: PostForm) -> Response {
    let result = match Selection::from_fields(&form.fields) {
        Ok(sel) => {
            tracing::info!(operator = %form.authed.session.operator, ?sel, "A console replay was asked for.");
            replay(&c, &sel, &form.authed.session.operator).await
        }
        Err(e) => Err(e),
    };
    done(&form.fields, "/console/dead-letters", result)
}

pub async fn preview_handler(State(c): State<Console>, form: PostForm) -> Response {
    let result = match Selection::from_fields(&form.fields) {
        Ok(sel) => preview_replay(&c, &sel).await,
        Err(e) => Err(e),
    };
    done(&form.fields, "/console/dead-letters", result)
}

pub async fn discard_handler(State(c): State<Console>, form: PostForm) -> Response {
    let Some(reason) = form.fields.get("reason_text") else {
        return done(
            &form.fields,
            "/console/dead-letters",
            Err("A discard needs a reason.".into()),
        );
    };
    let result = match Selection::from_fields(&form.fields) {
        Ok(sel) => discard(&c, &sel, &reason, &form.authed.session.operator).await,
        Err(e) => Err(e),
    };
    done(&form.fields, "/console/dead-letters", result)
}

fn target_of(fields: &Fields) -> Result<String, String> {
    let t = fields.get("target").ok_or("No target was given.")?;
    if crate::model::raw_event::Source::ALL
        .iter()
        .any(|k| k.as_str() == t)
    {
        Ok(t)
    } else {
        Err(format!("`{t}` is not a target."))
    }
}

pub async fn pause_handler(State(c): State<Console>, form: PostForm) -> Response {
    let result = match (target_of(&form.fields), form.fields.get("reason")) {
        (Ok(t), Some(reason)) => pause_target(&c, &t, &reason, &form.authed.session.operator).await,
        (Ok(_), None) => Err("A pause needs a reason.".into()),
        (Err(e), _) => Err(e),
    };
    done(&form.fields, "/console/targets", result)
}

pub async fn resume_handler(State(c): State<Console>, form: PostForm) -> Response {
    let result = match target_of(&form.fields) {
        Ok(t) => resume_target(&c, &t, &form.authed.session.operator).await,
        Err(e) => Err(e),
    };
    done(&form.fields, "/console/targets", result)
}

/// `type:id` records, separated by spaces, commas or lines.
pub fn parse_records(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once(':') {
            Some((t, i)) if !t.is_empty() && !i.is_empty() => Ok((t.to_string(), i.to_string())),
            _ => Err(format!("`{s}` is not a record (type:id)")),
        })
        .collect()
}

pub async fn resync_handler(State(c): State<Console>, form: PostForm) -> Response {
    let records = parse_records(&form.fields.get("records").unwrap_or_default());
    let result = match (target_of(&form.fields), records) {
        (Ok(_), Ok(r)) if r.is_empty() => Err("Name the records to resync (type:id).".into()),
        (Ok(t), Ok(r)) => resync(&c, &t, &r, &form.authed.session.operator).await,
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    done(&form.fields, "/console/targets", result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_read_as_type_colon_id() {
        assert_eq!(
            parse_records("project:1, task:a-2\nproject:3"),
            Ok(vec![
                ("project".into(), "1".into()),
                ("task".into(), "a-2".into()),
                ("project".into(), "3".into())
            ])
        );
        assert!(parse_records("project").is_err());
        assert!(parse_records(":1").is_err());
    }

    #[test]
    fn ticked_ids_win_over_the_filter() {
        let f = Fields::parse(b"id=4&id=5&stage=merge");
        assert!(matches!(Selection::from_fields(&f), Ok(Selection::Ids(v)) if v == [4, 5]));
        let f =
            Fields::parse(b"stage=merge&group=1&g_stage=merge&g_reason=invalid&g_status=&g_msg=");
        match Selection::from_fields(&f) {
            Ok(Selection::Filter(filter, Some(k))) => {
                assert_eq!(filter.stage.as_deref(), Some("merge"));
                assert_eq!(k.message, "");
                assert_eq!(k.reason, "invalid");
            }
            other => panic!("{other:?}"),
        }
    }
}
