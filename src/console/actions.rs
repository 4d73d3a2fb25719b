//! The console's actions (docs/spec.md §7.1). Each handler reads its form
//! (the session and CSRF token already checked by [`PostForm`]), calls one
//! operation function, and redirects back with a flash message saying what
//! happened. The operations are the CLI's and the admin API's: the console
//! adds no logic of its own.
//!
//! Replay exists (`crate::dlq::replay`). Replay preview, discard, pause,
//! resume and resync do not exist in this build yet: their functions below
//! are placeholders, marked `NOT AVAILABLE IN THIS BUILD`, that answer so;
//! each is one call to wire to `src/ops/` once it is merged.

use axum::extract::State;
use axum::response::Response;

use super::auth::PostForm;
use super::dead_letters::Params;
use super::form::{back_to, Fields};
use super::layout::redirect_with_flash;
use super::Console;
use crate::store::dead_letters::DlqFilter;
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
// Operations.

/// Replays the selection through `crate::dlq::replay` (the CLI's `dlq
/// replay` and `POST /admin/dlq/replay`).
pub async fn replay(c: &Console, sel: &Selection) -> Result<String, String> {
    let Some(publishers) = c.publishers.clone() else {
        return Err("Replay is not available on this server (no publisher).".into());
    };
    let ids = sel.ids(c, crate::dlq::MAX_BATCH).await?;
    if ids.is_empty() {
        return Ok("Nothing to replay: no open dead letter is selected.".into());
    }
    let (mut replayed, mut skipped, mut failed) = (0, 0, 0);
    for chunk in ids.chunks(REPLAY_CHUNK) {
        let filter = DlqFilter {
            ids: chunk.to_vec(),
            ..Default::default()
        };
        let r = crate::dlq::replay(&c.store, &publishers, &filter, false)
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

fn not_available(what: &str) -> String {
    format!("{what} is not available in this build.")
}

/// NOT AVAILABLE IN THIS BUILD: the replay preview (how many, which records,
/// which targets). To be wired to `src/ops/`.
pub async fn preview_replay(_c: &Console, _sel: &Selection) -> Result<String, String> {
    Err(not_available("Replay preview"))
}

/// NOT AVAILABLE IN THIS BUILD: discard with a reason (kept, marked
/// `discarded`, audited with who and why). To be wired to `src/ops/`.
pub async fn discard(
    _c: &Console,
    _sel: &Selection,
    _reason: &str,
    _operator: &str,
) -> Result<String, String> {
    Err(not_available("Discarding dead letters"))
}

/// NOT AVAILABLE IN THIS BUILD: pause a target (held like an open circuit
/// with cause `paused`, stored in the database). To be wired to `src/ops/`.
pub async fn pause_target(
    _c: &Console,
    _target: &str,
    _reason: &str,
    _operator: &str,
) -> Result<String, String> {
    Err(not_available("Pausing a target"))
}

/// NOT AVAILABLE IN THIS BUILD: resume a paused target. To be wired to `src/ops/`.
pub async fn resume_target(_c: &Console, _target: &str, _operator: &str) -> Result<String, String> {
    Err(not_available("Resuming a target"))
}

/// NOT AVAILABLE IN THIS BUILD: resync records to a target (their current
/// merged state, `X-Backbone-Resync: true`, audited). To be wired to `src/ops/`.
pub async fn resync(
    _c: &Console,
    _target: &str,
    _records: &[(String, String)],
    _operator: &str,
) -> Result<String, String> {
    Err(not_available("Resyncing records"))
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
            replay(&c, &sel).await
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
    if crate::explain::TARGETS.iter().any(|k| k.as_str() == t) {
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
