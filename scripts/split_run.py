#!/usr/bin/env python3
"""Two daemons on two databases splitting one raw stream by ordering key.

Driven by scripts/split-run.sh (docs/capacity.md §d). Standard library only:
events are published through the Pub/Sub emulator's REST API (1,000 per
request, in order per key), the databases are read with the `mysql` client.

Partition of an event: p = first 8 bytes of SHA-256(ordering key), read as a
big-endian unsigned integer, mod 2. Ordering key = `{record_type}:{record_id}`
(crates/backbone/src/model/raw_event.rs `ordering_key`). Each partition is its own topology:
one Pub/Sub project id per partition (the emulator ignores subscription
filters), provisioned with `event-backbone provision`, and its own database.
"""

import argparse
import base64
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone

EMULATOR = os.environ.get("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")
MYSQL = ["mysql", "-h127.0.0.1", "-P3306", "-uroot", "--batch", "--skip-column-names"]
RECORD_TYPE = "customer"
RAW_TOPIC = "events.raw.local"


def partition_of(key: str, parts: int = 2) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % parts


def log(msg: str) -> None:
    print(f"[{datetime.now(timezone.utc).strftime('%H:%M:%S')}] {msg}", flush=True)


def sql(db: str, query: str) -> list[list[str]]:
    out = subprocess.run(MYSQL + [db, "-e", query], check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def rest(method: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{EMULATOR}/v1/{path}", data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"{}")


def make_events(n: int, records: int, seed: int):
    """n events over `records` records, interleaved; each record's k-th event
    has base_version k-1 (its record's version when published in order), a
    later timestamp than the one before, a random source and a unique
    changes.n so every event can be found in `events`."""
    rng = random.Random(seed)
    ids = [f"split-{r:04d}" for r in range(records)]
    per = [0] * records
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    out = []
    for i in range(n):
        r = i % records
        k = per[r]
        per[r] += 1
        source = rng.choice(["suitex", "netsuite"])
        ev = {
            "record_type": RECORD_TYPE,
            "record_id": ids[r],
            "source": source,
            "timestamp": (t0 + timedelta(milliseconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "base_version": k,
            "changes": {"n": i, f"f{k % 3}": f"{ids[r]}-v{k + 1}-{source}"},
        }
        out.append((f"{RECORD_TYPE}:{ids[r]}", ev))
    return out


def publish(projects: list[str], events) -> list[int]:
    """Publishes each event to its partition's raw topic; batches keep
    publish order, so every key's events arrive in version order."""
    counts = [0] * len(projects)
    batches: list[list[dict]] = [[] for _ in projects]

    def flush(p: int) -> None:
        if batches[p]:
            rest("POST", f"projects/{projects[p]}/topics/{RAW_TOPIC}:publish", {"messages": batches[p]})
            counts[p] += len(batches[p])
            batches[p] = []

    for key, ev in events:
        p = partition_of(key, len(projects))
        data = base64.b64encode(json.dumps(ev, separators=(",", ":")).encode()).decode()
        batches[p].append({"data": data, "orderingKey": key})
        if len(batches[p]) >= 1000:
            flush(p)
    for p in range(len(projects)):
        flush(p)
    return counts


def stored(db: str) -> int:
    return int(sql(db, "SELECT COUNT(*) FROM events")[0][0])


class Daemons:
    """The daemons of all partitions; killed on exit whatever happens."""

    def __init__(self, binary: str, envs: list[dict], logs: list[str], pidfile: str):
        self.binary, self.envs, self.logs, self.pidfile = binary, envs, logs, pidfile
        self.procs: list = [None] * len(envs)

    def start(self, p: int) -> None:
        logf = open(self.logs[p], "a")
        self.procs[p] = subprocess.Popen([self.binary, "run"], env=self.envs[p], stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self._write_pids()

    def _write_pids(self) -> None:
        with open(self.pidfile, "w") as f:
            f.write(" ".join(str(pr.pid) for pr in self.procs if pr and pr.poll() is None))

    def sigkill(self, p: int) -> None:
        self.procs[p].send_signal(signal.SIGKILL)
        self.procs[p].wait()

    def stop_all(self) -> None:
        for pr in self.procs:
            if pr and pr.poll() is None:
                pr.send_signal(signal.SIGTERM)
        for pr in self.procs:
            if pr and pr.poll() is None:
                try:
                    pr.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pr.kill()
                    pr.wait()
        self._write_pids()


def check(dbs: list[str], published: list[int], all_n: dict[int, int]) -> bool:
    """Prints the checks; returns whether every one passed."""
    ok = True
    keys = []
    for p, db in enumerate(dbs):
        rows = sql(db, "SELECT CAST(JSON_EXTRACT(changes, '$.n') AS SIGNED) FROM events")
        ns = [int(r[0]) for r in rows]
        expected = {n for n, q in all_n.items() if q == p}
        lost = len(expected - set(ns))
        doubled = len(ns) - len(set(ns))
        foreign = len(set(ns) - expected)
        good = len(ns) == published[p] and lost == 0 and doubled == 0 and foreign == 0
        ok &= good
        print(f"  p{p} {db}: published {published[p]}, stored {len(ns)}, lost {lost}, doubled {doubled}, "
              f"from the other partition {foreign} -> {'ok' if good else 'FAIL'}")
        keys.append({r[0] for r in sql(db, "SELECT DISTINCT CONCAT(record_type, ':', record_id) FROM events")})
    both = keys[0] & keys[1]
    wrong_part = sum(1 for p, ks in enumerate(keys) for k in ks if partition_of(k, len(dbs)) != p)
    ok &= not both and wrong_part == 0
    print(f"  records: p0 {len(keys[0])}, p1 {len(keys[1])}, in both databases {len(both)}, "
          f"in the wrong partition {wrong_part} -> {'ok' if not both and wrong_part == 0 else 'FAIL'}")
    for p, db in enumerate(dbs):
        rows = sql(db, "SELECT CONCAT(record_type, ':', record_id), version FROM merged_events "
                       "ORDER BY record_type, record_id, sequence_num")
        per: dict[str, list[int]] = {}
        for k, v in rows:
            per.setdefault(k, []).append(int(v))
        ev_per = {r[0]: int(r[1]) for r in sql(
            db, "SELECT CONCAT(record_type, ':', record_id), COUNT(*) FROM events GROUP BY record_type, record_id")}
        final = {r[0]: int(r[1]) for r in sql(
            db, "SELECT CONCAT(record_type, ':', record_id), version FROM record_state")}
        out_of_order = sum(1 for vs in per.values() if any(b <= a for a, b in zip(vs, vs[1:])))
        missing = sum(1 for k, c in ev_per.items() if len(per.get(k, [])) != c)
        not_final = sum(1 for k, c in ev_per.items() if final.get(k) != c)
        pending = int(sql(db, "SELECT COUNT(*) FROM pending_events")[0][0])
        dead = int(sql(db, "SELECT COUNT(*) FROM dead_letters")[0][0])
        outbox = int(sql(db, "SELECT COUNT(*) FROM outbox")[0][0])
        good = out_of_order == 0 and missing == 0 and not_final == 0 and pending == 0 and dead == 0
        ok &= good
        print(f"  p{p} merged_events: {len(rows)} over {len(per)} records, out of order {out_of_order}, "
              f"records missing a merged event {missing}, records not at their final version {not_final}, "
              f"pending {pending}, dead letters {dead}, outbox not yet confirmed {outbox} -> "
              f"{'ok' if good else 'FAIL'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--kill", action="store_true")
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--config-dir", required=True)
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()

    parts = 2
    projects = [f"split-p{p}-{a.run_id}" for p in range(parts)]
    dbs = [f"split_p{p}_{a.run_id}" for p in range(parts)]
    base = dict(os.environ, PUBSUB_EMULATOR_HOST=EMULATOR, BACKBONE_CONFIG_DIR=a.config_dir)
    envs = []
    for p in range(parts):
        envs.append(dict(
            base,
            BACKBONE__PUBSUB__PROJECT_ID=projects[p],
            BACKBONE__DATABASE__URL=f"mysql://root@127.0.0.1:3306/{dbs[p]}",
            BACKBONE__DATABASE__MIGRATE_ON_START="false",
            BACKBONE__SNAPSHOTS__URL=f"file://{a.workdir}/snapshots-p{p}",
            BACKBONE__HTTP__METRICS_ADDR="127.0.0.1:0",
            BACKBONE__HTTP__ADMIN_ADDR="127.0.0.1:0",
            # Delivery consumers off: this run measures the split of the
            # merge stage; merged events still go to each partition's
            # merged topic (deleted with the project's resources).
            BACKBONE__CONSUMERS__NETSUITE__ENABLED="false",
            BACKBONE__CONSUMERS__SUITEX__ENABLED="false",
        ))
    logs = [f"{a.workdir}/daemon-p{p}-{a.run_id}.log" for p in range(parts)]
    daemons = Daemons(a.binary, envs, logs, f"{a.workdir}/pids-{a.run_id}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))

    created_dbs: list[str] = []
    try:
        log(f"run {a.run_id}: {a.events} events over {a.records} records, 2 partitions, "
            f"p = SHA-256(ordering key)[0:8] as big-endian u64 mod 2" + (", --kill" if a.kill else ""))
        for p in range(parts):
            subprocess.run(MYSQL + ["-e", f"CREATE DATABASE {dbs[p]}"], check=True)
            created_dbs.append(dbs[p])
            subprocess.run([a.binary, "migrate"], env=envs[p], check=True, capture_output=True)
            subprocess.run([a.binary, "provision"], env=envs[p], check=True, capture_output=True)
            log(f"p{p}: database {dbs[p]} migrated, project {projects[p]} provisioned")

        events = make_events(a.events, a.records, seed=13)
        all_n = {ev["changes"]["n"]: partition_of(k, parts) for k, ev in events}
        t = time.monotonic()
        published = publish(projects, events)
        log(f"published {sum(published)} in {time.monotonic() - t:.1f} s: p0 {published[0]}, p1 {published[1]} "
            f"(records p0 {len({k for k, _ in events if partition_of(k) == 0})}, "
            f"p1 {len({k for k, _ in events if partition_of(k) == 1})})")

        # The whole backlog is waiting; both daemons start on it together.
        t0 = time.monotonic()
        for p in range(parts):
            daemons.start(p)
        log("both daemons started (merge, retry, park consumers; delivery off)")
        done_at: list = [None] * parts
        killed = False
        last_report = 0.0
        while None in done_at:
            now = time.monotonic()
            if now - t0 > a.timeout:
                log(f"TIMEOUT after {a.timeout:.0f} s: stored p0 {stored(dbs[0])}, p1 {stored(dbs[1])}")
                return 1
            counts = [stored(db) for db in dbs]
            for p in range(parts):
                if done_at[p] is None and counts[p] >= published[p]:
                    done_at[p] = now - t0
                    log(f"p{p} drained: {counts[p]} stored after {done_at[p]:.1f} s")
            if a.kill and not killed and counts[0] >= published[0] // 2:
                daemons.sigkill(0)
                log(f"SIGKILL daemon p0 at {counts[0]}/{published[0]} stored; restarting it")
                daemons.start(0)
                killed = True
            if now - last_report >= 5:
                log(f"stored p0 {counts[0]}/{published[0]}, p1 {counts[1]}/{published[1]}")
                last_report = now
            time.sleep(0.2)

        # Let the outboxes confirm their last publishes before the checks.
        settle = time.monotonic()
        while time.monotonic() - settle < 60 and any(
                int(sql(db, "SELECT COUNT(*) FROM outbox")[0][0]) for db in dbs):
            time.sleep(0.5)
        daemons.stop_all()
        log("daemons stopped (SIGTERM)")

        print("CHECKS")
        ok = check(dbs, published, all_n)
        for p in range(parts):
            r = subprocess.run([a.binary, "verify"], env=envs[p], capture_output=True, text=True)
            last = (r.stdout.strip().splitlines() or [""])[-1]
            ok &= r.returncode == 0
            print(f"  p{p} event-backbone verify: exit {r.returncode} ({last})")

        print("DRAIN (from both daemons' start on the full backlog; includes process start-up"
              + (" and the kill/restart of p0" if a.kill else "") + ")")
        for p in range(parts):
            span = sql(dbs[p], "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(created_at), MAX(created_at)) FROM events")
            span_s = int(span[0][0]) / 1e6
            print(f"  p{p}: {published[p]} events in {done_at[p]:.1f} s = {published[p] / done_at[p]:.0f} events/s "
                  f"(first to last stored row: {span_s:.1f} s = {published[p] / span_s:.0f} events/s)")
        total = sum(published)
        wall = max(done_at)
        print(f"  combined: {total} events in {wall:.1f} s = {total / wall:.0f} events/s")
        print(f"RESULT {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    finally:
        daemons.stop_all()
        for p in range(parts):
            for sub in ("events.raw.local-merge-sub", "events.merged.local-netsuite-sub",
                        "events.merged.local-suitex-sub", "events.error.local-retry-sub", "events.dlq.local-sub"):
                try:
                    rest("DELETE", f"projects/{projects[p]}/subscriptions/{sub}")
                except Exception:
                    pass
            for topic in ("raw", "merged", "error", "dlq"):
                try:
                    rest("DELETE", f"projects/{projects[p]}/topics/events.{topic}.local")
                except Exception:
                    pass
        if os.environ.get("SPLIT_KEEP_DB") != "1":
            for db in created_dbs:
                subprocess.run(MYSQL + ["-e", f"DROP DATABASE IF EXISTS {db}"], check=False)
        log("cleaned up: daemons stopped, emulator topics/subscriptions deleted"
            + ("" if os.environ.get("SPLIT_KEEP_DB") == "1" else ", databases dropped"))


if __name__ == "__main__":
    sys.exit(main())
