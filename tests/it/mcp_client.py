"""An MCP client for tests/it/mcp.rs, on the official Python SDK (PyPI `mcp`).

Drives event-backbone's MCP server over stdio (the `mcp` subcommand, started
here as a subprocess) or over streamable HTTP (`/mcp` on the admin listener),
on the docs/spec.md §5 worked example the Rust test seeded (project/42), and checks
every tool and the refusals. Prints one JSON line per check and a final
`{"ok": true, ...}` line; exits 1 at the first failed check.

    python mcp_client.py stdio --bin PATH [--writes] [--confirm-replay] --tag T
    python mcp_client.py http --url URL --token TOKEN [--writes] --tag T
"""

import argparse
import asyncio
import json
import os
import sys
import time

import httpx2
import jsonschema
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

READ_TOOLS = {
    "query_events",
    "replay_events",
    "explain_field",
    "list_event_types",
    "list_dead_letters",
    "show_dead_letter",
    "pipeline_status",
    "preview_dead_letters",
    "list_targets",
}
WRITE_TOOLS = {
    "replay_dead_letters",
    "emit_event",
    "discard_dead_letters",
    "pause_target",
    "resume_target",
    "resync_records",
}
RECORD = {"record_type": "project", "record_id": "42"}


class CheckFailed(Exception):
    pass


def check(cond, what, detail=None):
    line = {"check": what, "ok": bool(cond)}
    if not cond:
        line["detail"] = detail
    print(json.dumps(line, default=str), flush=True)
    if not cond:
        raise CheckFailed(f"{what}: {detail}")


def text_of(result):
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def ok(client, tool, args=None):
    """Calls a tool that must succeed; returns its structured content."""
    r = await client.call_tool(tool, args or {})
    check(not r.is_error, f"{tool} succeeds", text_of(r))
    check(r.structured_content is not None, f"{tool} answers structured content", text_of(r))
    return r.structured_content


async def refused(client, tool, args, *needles):
    """Calls a tool that must answer a tool error containing every needle."""
    r = await client.call_tool(tool, args)
    msg = text_of(r)
    check(r.is_error, f"{tool} {json.dumps(args)[:80]} is a tool error", msg)
    for n in needles:
        check(n in msg, f"{tool}'s error names {n!r}", msg)
    return msg


async def tools_listed(client, writes):
    listed = await client.list_tools()
    tools = {t.name: t for t in listed.tools}
    want = READ_TOOLS | (WRITE_TOOLS if writes else set())
    check(set(tools) == want, "tools/list names exactly the expected tools", sorted(tools))
    for t in tools.values():
        schema = t.input_schema
        check(schema.get("type") == "object", f"{t.name}: input schema is an object", schema)
        jsonschema.validators.validator_for(schema).check_schema(schema)
        out = t.output_schema
        check(out is not None and out.get("type") == "object", f"{t.name}: output schema is an object", out)
        jsonschema.validators.validator_for(out).check_schema(out)
        check(bool(t.description), f"{t.name}: has a description", None)
    ro = {n for n, t in tools.items() if t.annotations and t.annotations.read_only_hint}
    check(ro == READ_TOOLS, "read tools (only) are annotated read-only", sorted(ro))
    return tools


async def read_tools(client):
    types = await ok(client, "list_event_types")
    project = next((t for t in types["record_types"] if t["record_type"] == "project"), None)
    check(project is not None, "list_event_types lists project", types["record_types"])
    check(project["sources"].get("netsuite") == 7 and project["sources"].get("suitex", 0) >= 1,
          "project's events per source", project["sources"])
    fields = {f["name"] for f in project["fields"]}
    check({"name", "status", "f1"} <= fields, "project's fields are seen from the data", sorted(fields))
    outcomes = {o["name"] for o in types["outcomes"]}
    check({"merged", "duplicate", "delivered", "pending"} <= outcomes, "outcomes listed", sorted(outcomes))
    reasons = {o["name"]: o["description"] for o in types["dead_letter_reasons"]}
    check(set(reasons) == {"invalid", "permanent", "exhausted", "gap"} and all(reasons.values()),
          "dead-letter reasons with descriptions", reasons)

    page = await ok(client, "query_events", RECORD)
    check(page["total_count"] == 8 and not page["has_more"], "query_events: 8 events, no more", page["total_count"])
    seqs = [e["sequence_num"] for e in page["events"]]
    check(seqs == list(range(8, 0, -1)), "newest first", seqs)
    last = page["events"][0]
    check(last["source"] == "suitex" and last["changes"] == {"status": "open", "name": "X"},
          "seq 8 is the suitex event of docs/spec.md §5", last)
    check(len(last["fingerprint"] or "") == 64, "events carry their fingerprint", last["fingerprint"])
    stages = {(a["stage"], a["outcome"]) for a in last["audit"]}
    check(("merge", "merged") in stages and ("deliver.suitex", "delivered") in stages,
          "seq 8's audit trail", sorted(stages))

    p = await ok(client, "query_events", {**RECORD, "limit": 3})
    check(p["total_count"] == 8 and p["has_more"] and len(p["events"]) == 3, "limit 3: has_more", p["total_count"])
    p = await ok(client, "query_events", {**RECORD, "limit": 3, "offset": 6})
    check([e["sequence_num"] for e in p["events"]] == [2, 1] and not p["has_more"], "offset 6", p["events"])
    p = await ok(client, "query_events", {**RECORD, "source": "netsuite"})
    check(p["total_count"] == 7, "source filter", p["total_count"])
    p = await ok(client, "query_events", {**RECORD, "keyword": "OPEN"})
    check([e["sequence_num"] for e in p["events"]] == [8], "keyword filter (case-insensitive)", p["events"])
    p = await ok(client, "query_events", {**RECORD, "since": "2026-03-13T09:30:00Z"})
    check(p["total_count"] == 2, "since filter", p["total_count"])
    p = await ok(client, "query_events", {**RECORD, "until": "2026-03-13T03:00:00Z"})
    check(p["total_count"] == 2, "until filter", p["total_count"])
    p = await ok(client, "query_events", {**RECORD, "outcome": "merged"})
    check(p["total_count"] == 8, "outcome filter", p["total_count"])
    p = await ok(client, "query_events", {**RECORD, "outcome": "duplicate"})
    check(p["total_count"] == 0 and p["events"] == [], "a filter matching nothing is an empty page", p)
    await refused(client, "query_events", {**RECORD, "outcome": "exploded"}, "exploded", "merged")
    await refused(client, "query_events", {**RECORD, "limit": 1001}, "limit")

    at7 = await ok(client, "replay_events", {**RECORD, "to_sequence_num": 7})
    check(at7["version"] == 7 and at7["state"].get("status") == "closed" and at7["state"].get("name") == "Old",
          "replay to 7", at7["state"])
    check(at7["events_replayed"] == 7 and at7["duration_ms"] >= 0, "events_replayed and duration_ms", at7)
    head = await ok(client, "replay_events", RECORD)
    check(head["version"] == 8 and head["state"]["name"] == "X" and head["state"]["status"] == "closed",
          "replay to the latest: docs/spec.md §5 result", head["state"])
    check(head["fields"]["status"]["source"] == "netsuite", "field provenance", head["fields"]["status"])

    x = await ok(client, "explain_field", {**RECORD, "field": "status"})
    status = x["fields"]["status"]
    check(status["value"] == "closed" and status["set_by"]["source"] == "netsuite", "explain: set by", status)
    c = status["conflicts"][0]
    check(c["winner"]["event"]["source"] == "netsuite" and c["loser"]["value"] == "open"
          and c["rule"] == "last_writer_wins", "explain: the conflict", c)
    check(status["delivery"]["suitex"]["status"] == "delivered", "explain: suitex has it", status["delivery"])
    x = await ok(client, "explain_field", RECORD)
    check(set(x["fields"]) == {"f1", "f2", "f3", "f4", "f5", "name", "status"}, "explain: every field", list(x["fields"]))
    await refused(client, "explain_field", {**RECORD, "field": "colour"}, "not found", "colour")

    dls = await ok(client, "list_dead_letters", {})
    check(dls["pending_total"] >= 1 and dls["count"] >= 1, "list_dead_letters: the seeded one", dls)
    dl = dls["dead_letters"][0]
    check(dl["reason"] == "invalid" and dl["stage"] == "merge", "the invalid event's dead letter", dl)
    f = await ok(client, "list_dead_letters", {"reason": "gap"})
    check(f["count"] == 0, "reason filter", f)
    shown = await ok(client, "show_dead_letter", {"id": dl["id"]})
    check(shown["id"] == dl["id"] and (shown["data_json"] or {}).get("source") == "sap",
          "show_dead_letter: the message data", shown.get("data"))
    check(any("source" in e for e in shown["errors"]), "show_dead_letter: the error names the field", shown["errors"])
    await refused(client, "show_dead_letter", {"id": 987654321}, "not found", "987654321")

    st = await ok(client, "pipeline_status")
    r = st["readiness"]
    check(r["ready"] is True and r["database"] == "ok", "pipeline_status: ready", r)
    check(len(r["consumers"]) >= 3, "pipeline_status: per-consumer state", r["consumers"])
    targets = {t["target"]: t for t in st["targets"]}
    check(set(targets) == {"netsuite", "suitex"} and all(t["configured"] for t in targets.values()),
          "pipeline_status: both targets configured", targets)
    # A record's burst may go as one request (covered versions write no
    # audit row): at least the conflict's delivery and one of the history's.
    check(targets["suitex"]["recent_outcomes"].get("delivered", 0) >= 2 and targets["suitex"]["last_delivered_at"],
          "pipeline_status: suitex's recent deliveries", targets["suitex"])
    check(st["dead_letters"]["pending"] >= 1, "pipeline_status: parked dead letters", st["dead_letters"])
    check(st["pending"]["events"] == 0, "pipeline_status: no pending events", st["pending"])

    # Refusals a model can act on.
    for tool in ("query_events", "replay_events", "explain_field"):
        await refused(client, tool, {"record_type": "Project!", "record_id": "42"}, "record_type", "Project!")
        await refused(client, tool, {"record_type": "project", "record_id": "nope"}, "not found", "project/nope")
    return dl["id"]


async def write_tools(client, tag, dead_letter, confirm, caller):
    dry = await ok(client, "replay_dead_letters", {"ids": [dead_letter]})
    check(dry["dry_run"] and dry["replayed"] == [dead_letter] and "confirm" in dry["message"],
          "replay_dead_letters without confirm is a dry run", dry)
    if confirm:
        done = await ok(client, "replay_dead_letters", {"ids": [dead_letter], "confirm": True})
        check(not done["dry_run"] and done["replayed"] == [dead_letter], "replay_dead_letters with confirm", done)

    paused = await ok(client, "pause_target", {"target": "netsuite", "reason": "mcp test"})
    check(paused["paused"] and paused["actor"].startswith("mcp/"), "pause_target records the caller", paused)
    await refused(client, "pause_target", {"target": "sap", "reason": "x"}, "unknown target")
    resumed = await ok(client, "resume_target", {"target": "netsuite"})
    check(not resumed["paused"], "resume_target", resumed)
    listed = await ok(client, "list_targets")
    check(len(listed["targets"]) == 2, "list_targets: both targets", listed)
    await refused(client, "resync_records", {"target": "sap", "records": ["project:42"]}, "unknown target")
    await refused(client, "resync_records", {"target": "netsuite", "records": ["42"]}, "<record_type>:<record_id>")
    rs = await ok(client, "resync_records", {"target": "netsuite", "records": ["project:42"]})
    check(len(rs["results"]) == 1 and rs["results"][0]["record"] == "project:42",
          "resync_records answers per record", rs)
    pv = await ok(client, "preview_dead_letters", {})
    check(pv["count"] >= 0 and isinstance(pv["groups"], list), "preview_dead_letters", pv)

    await refused(client, "emit_event", {"event": {"record_type": "Project!", "record_id": "1", "source": "suitex",
                                                   "timestamp": "2026-03-14T10:00:00Z", "base_version": 0,
                                                   "changes": {"a": 1}}}, "record_type")
    await refused(client, "emit_event", {"event": {**RECORD, "source": "sap", "timestamp": "2026-03-14T10:00:00Z",
                                                   "base_version": 0, "changes": {"a": 1}}}, "source")
    record = {"record_type": "project", "record_id": f"mcp-{tag}"}
    event = {**record, "source": "suitex", "timestamp": "2026-03-14T10:00:00.123456Z", "base_version": 0,
             "changes": {"name": f"from MCP ({tag})"}}
    sent = await ok(client, "emit_event", {"event": event})
    check(sent["ordering_key"] == f"project:mcp-{tag}" and sent["message_id"], "emit_event: published", sent)
    deadline = time.monotonic() + 60
    while True:
        r = await client.call_tool("query_events", record)
        if not r.is_error and r.structured_content["events"]:
            break
        check(time.monotonic() < deadline, "the emitted event is merged within 60 s", text_of(r))
        await asyncio.sleep(0.25)
    page = r.structured_content
    e = page["events"][0]
    check(e["fingerprint"] == sent["fingerprint"], "the merged event has the emitted fingerprint", e)
    deadline = time.monotonic() + 30
    while not any(a["stage"] == "merge" for a in e["audit"]) and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        e = (await ok(client, "query_events", record))["events"][0]
    audit = [a for a in e["audit"] if a["stage"] == "mcp"]
    check(len(audit) == 1 and audit[0]["outcome"] == "emitted" and audit[0]["detail"]["caller"] == caller,
          "emit_event is audited with its caller", e["audit"])


async def writes_off(client):
    await refused(client, "emit_event", {"event": {}}, "disabled", "mcp.allow_emit")
    await refused(client, "replay_dead_letters", {"confirm": True}, "disabled", "mcp.allow_replay")
    await refused(client, "pause_target", {"target": "netsuite", "reason": "x"}, "disabled", "mcp.allow_pause")
    await refused(client, "discard_dead_letters", {"ids": [1], "reason": "x"}, "disabled", "mcp.allow_discard")
    await refused(client, "resync_records", {"target": "netsuite", "records": ["project:42"]}, "disabled", "mcp.allow_resync")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("transport", choices=["stdio", "http"])
    ap.add_argument("--bin")
    ap.add_argument("--url")
    ap.add_argument("--token")
    ap.add_argument("--writes", action="store_true")
    ap.add_argument("--confirm-replay", action="store_true")
    ap.add_argument("--tag", default="t")
    a = ap.parse_args()

    if a.transport == "stdio":
        # The test's environment (database URL, switches): the SDK would
        # otherwise hand the server only a minimal default environment.
        server = StdioServerParameters(command=a.bin, args=["mcp"], env=dict(os.environ))
        caller = "mcp/stdio"
    else:
        async with httpx2.AsyncClient() as raw:
            init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                               "clientInfo": {"name": "t", "version": "0"}}}
            hdrs = {"Accept": "application/json, text/event-stream"}
            r = await raw.post(a.url, json=init, headers=hdrs)
            check(r.status_code == 401, "HTTP without the bearer token: 401", r.status_code)
            r = await raw.post(a.url, json=init, headers={**hdrs, "Authorization": "Bearer wrong"})
            check(r.status_code == 401, "HTTP with a wrong token: 401", r.status_code)
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {a.token}"},
                                  timeout=httpx2.Timeout(30.0, read=300.0))
        server = streamable_http_client(a.url, http_client=http)
        caller = "mcp/http"

    # mode="legacy": the initialize handshake, which every MCP client speaks.
    async with Client(server, mode="legacy") as client:
        info = client.server_info
        check(info is not None and info.name == "event-backbone", "initialize: server info", info)
        check(client.server_capabilities.tools is not None, "initialize: tools capability", None)
        check("query_events" in (client.instructions or ""), "initialize: instructions", client.instructions)
        await tools_listed(client, a.writes)
        if a.writes:
            dead_letter = await read_tools(client)
            await write_tools(client, a.tag, dead_letter, a.confirm_replay, caller)
        else:
            await writes_off(client)
    print(json.dumps({"ok": True, "transport": a.transport, "writes": a.writes}), flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except CheckFailed as e:
        print(f"FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
