"""Tokens the cluster signed can be revoked before they expire: one token (given whole, by a
herd admin of the herds it holds roles in; by jti, cluster admins) or every token of a subject
issued so far. Refused at once by the server that revoked it, within a second by the others;
revocations go from the Barn once they no longer matter; a server that cannot read them
refuses the cluster's tokens. Every decision is in the audit log. And the audit log's
retention: whole days past it go, the rest stays."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from auth_helpers import secured_app

from runink.core.errors import BarnError
from runink.core.interfaces.barn import TxnOp
from runink.core.model import Grant
from runink.core.security import CLUSTER
from runink.core.server.audit_retention import AuditRetention
from runink.core.server.auth import AUDIT, AUDIT_UNDONE, LEEWAY, MAX_TTL, ClusterTokens, audit_day
from runink.core.server.revocations import NODE_CERTIFICATE_TTL, PREFIX, Revocations, RevocationsUnknown
from runink.core.server.serve_api import serve_api, stop_api
from runink.plugins.barn.memory import MemoryBarn


class Cluster:
    def __init__(self, http: httpx.Client, tokens: ClusterTokens, barn: Any) -> None:
        self.http, self.tokens, self.barn = http, tokens, barn

    def token(self, role: str, herd: str, name: str = "ci", ttl: float = 600) -> str:
        return self.tokens.mint(f"sa:{name}", [Grant(role, herd)], ttl)[0]

    def get(self, token: str) -> httpx.Response:
        return self.http.get("/v1/herds/team", headers={"Authorization": f"Bearer {token}"})

    def revoke(self, body: dict[str, str], token: str) -> httpx.Response:
        return self.http.post("/v1/tokens/revoke", json=body, headers={"Authorization": f"Bearer {token}"})

    def audit(self, admin: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self.http.get("/v1/audit", headers={"Authorization": f"Bearer {admin}"}).json()[
            "records"
        ]
        return [r for r in records if r["action"] == "tokens.revoke"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with secured_app(tmp_path) as secured:
        server, thread = serve_api(secured.app, "127.0.0.1", 0)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=10) as http:
                yield Cluster(http, secured.tokens, secured.store.barn)
        finally:
            stop_api(server, thread)


def test_a_token_revoked_whole_by_its_herds_admin_is_refused_at_once(cluster: Cluster) -> None:
    ci = cluster.token("runner", "team")
    twin = cluster.token("runner", "team")  # the same subject, another token: it stays good
    assert cluster.get(ci).status_code == 200
    team_admin, other_admin = cluster.token("admin", "team", "boss"), cluster.token("admin", "other", "boss2")
    refused = cluster.revoke({"token": ci}, other_admin)
    assert refused.status_code == 403 and "team" in refused.json()["detail"]
    assert cluster.get(ci).status_code == 200  # (a refused revocation changed nothing)
    done = cluster.revoke({"token": ci}, team_admin)
    assert done.status_code == 200, done.text
    assert done.json()["revoked"]["subject"] == "sa:ci"
    answer = cluster.get(ci)
    assert answer.status_code == 401 and "revoked" in answer.json()["detail"]
    assert cluster.get(twin).status_code == 200
    again = cluster.revoke({"token": ci}, team_admin)
    assert again.status_code == 409 and "needs no revoking" in again.json()["detail"]
    admin = cluster.token("cluster-admin", CLUSTER, "root")
    decisions = [(r["subject"], r["herd"], r["allowed"]) for r in cluster.audit(admin)]
    assert ("sa:boss2", "team", False) in decisions and ("sa:boss", "team", True) in decisions


def test_by_jti_or_by_subject_only_cluster_admins_revoke(cluster: Cluster) -> None:
    admin = cluster.token("cluster-admin", CLUSTER, "root")
    team_admin = cluster.token("admin", "team", "boss")
    ci = cluster.token("runner", "team")
    jti = cluster.tokens.jti_of(ci)
    assert jti is not None
    assert cluster.revoke({"jti": jti}, team_admin).status_code == 403
    assert cluster.revoke({"subject": "sa:ci"}, team_admin).status_code == 403
    assert cluster.revoke({"jti": jti}, admin).status_code == 200
    assert cluster.get(ci).status_code == 401
    older = cluster.token("runner", "team", "bot")
    assert cluster.revoke({"subject": "sa:bot"}, admin).status_code == 200
    assert "every token of sa:bot issued up to" in cluster.get(older).json()["detail"]
    assert cluster.get(cluster.token("runner", "team", "bot")).status_code == 200  # minted after: good at once
    for bad in ({}, {"jti": jti, "subject": "sa:x"}, {"jti": "NOT-HEX"}, {"subject": "a\nb"}):
        assert cluster.revoke(bad, admin).status_code == 422, bad


def test_revocations_leave_the_barn_when_they_no_longer_matter_and_other_servers_see_them(
    tmp_path: Path,
) -> None:
    now = [1_000_000.0]
    barn = MemoryBarn(clock=lambda: now[0], lease_check_interval=0.01)
    try:
        here = Revocations(barn, max_ttl=MAX_TTL, leeway=LEEWAY, clock=lambda: now[0])
        there = Revocations(barn, max_ttl=MAX_TTL, leeway=LEEWAY, clock=lambda: now[0])  # another server
        assert there.why_revoked("sa:ci", "abc", now[0]) is None  # (read: trusted for a second)
        here.revoke_token("abc", "sa:ci", expires=now[0] + 60, by="root")
        assert here.why_revoked("sa:ci", "abc", now[0]) == "revoked"  # this server: at once
        assert there.why_revoked("sa:ci", "abc", now[0]) is None  # the other: within a second
        time.sleep(1.05)
        assert there.why_revoked("sa:ci", "abc", now[0]) == "revoked"
        here.revoke_subject("sa:deployer", by="root")
        here.revoke_subject("node:n1", by="root")
        assert [kv.key for kv in barn.scan(PREFIX)] != []
        now[0] += 60 + LEEWAY + 1  # the token expired: its revocation is not needed any more
        _wait(lambda: len(barn.scan(PREFIX)) == 2)
        now[0] += MAX_TTL  # no token issued before the subject's revocation can still be good...
        _wait(lambda: len(barn.scan(PREFIX)) == 1)
        now[0] += NODE_CERTIFICATE_TTL  # ... nor a node's certificate, which lives a year
        _wait(lambda: barn.scan(PREFIX) == [])
    finally:
        barn.close()


def test_a_server_that_cannot_read_revocations_takes_no_token(tmp_path: Path) -> None:
    class Away(MemoryBarn):
        def scan(self, prefix: str, *, limit: int | None = None, after: str | None = None) -> list[Any]:
            raise BarnError("no leader")

    revocations = Revocations(Away(), max_ttl=MAX_TTL, leeway=LEEWAY)
    with pytest.raises(RevocationsUnknown):
        revocations.why_revoked("sa:ci", "abc", time.time())


def test_the_audit_logs_retention_removes_whole_days_past_it() -> None:
    barn = MemoryBarn()
    day = 86400.0
    now = 1_800_000_000.0
    for age_days, count in ((400, 3), (91, 2), (90, 2), (1, 1)):
        for n in range(count):
            at = now - age_days * day
            barn.put(f"{AUDIT}{audit_day(at)}/{int(at * 1e9):020d}-{n}", json.dumps({"at": at}).encode())
    retention = AuditRetention(barn, keep_for=90 * day)
    assert retention(now) == 5  # the 400- and 91-day-old ones
    assert sorted({kv.key.split("/")[3] for kv in barn.scan(AUDIT)}) == [
        audit_day(now - 90 * day),
        audit_day(now - day),
    ]
    barn.put(f"{AUDIT}{audit_day(now - 200 * day)}/x", b"{}")
    assert retention(now + 30) == 0  # a minute has not passed: not looked at again
    assert retention(now + 60) == 1
    assert AuditRetention(barn, keep_for=None)(now + 10 * 365 * day) == 0  # 0: kept as long as the Barn is
    barn.transaction([], [TxnOp(kv.key, None) for kv in barn.scan(AUDIT)])


def test_the_audit_log_keeps_at_most_its_newest_records_whatever_their_day() -> None:
    """[cluster] audit_keep_max: every submission writes a record, so days alone let a busy
    cluster fill its Barn; past the bound the oldest go, the age bound still applying."""
    barn = MemoryBarn()
    day = 86400.0
    now = 1_800_000_000.0
    for age_days in (3, 2, 1, 0):
        at = now - age_days * day
        barn.transaction(
            [], [TxnOp(f"{AUDIT}{audit_day(at)}/{int(at * 1e9) + n:020d}-{n}", b"{}") for n in range(1500)]
        )
    assert AuditRetention(barn, keep_for=None, keep_max=2000)(now) == 4000
    kept = barn.scan(AUDIT)
    assert len(kept) == 2000 and {kv.key.split("/")[3] for kv in kept} == {audit_day(now - day), audit_day(now)}
    assert kept[0].key.endswith("-1000")  # the day's oldest went first
    both = AuditRetention(barn, keep_for=0.25 * day, keep_max=1800)  # (now is 08:00 UTC: yesterday is past it)
    assert both(now) == 500  # 200 past the count, then the rest of yesterday (300) past the age
    assert {kv.key.split("/")[3] for kv in barn.scan(AUDIT)} == {audit_day(now)} and barn.count(AUDIT) == 1500


def test_refusals_are_kept_apart_and_never_push_an_allowed_change_out() -> None:
    """Any caller may be refused, and each refusal was a record among the allowed changes:
    one node's token pushed every allowed change out of the log (a review, 293 a second)."""
    barn = MemoryBarn()
    now = 1_800_000_000.0
    day = audit_day(now)
    barn.transaction([], [TxnOp(f"{AUDIT}{day}/{n:020d}-a", b"{}") for n in range(10)])
    barn.transaction([], [TxnOp(f"{AUDIT_UNDONE}{day}/{n:020d}-r", b"{}") for n in range(10, 400)])
    assert AuditRetention(barn, keep_for=None, keep_max=100)(now) == 380  # a tenth of 100 refusals kept
    assert barn.count(AUDIT) == 10 and barn.count(AUDIT_UNDONE) == 10
    assert barn.scan(AUDIT_UNDONE)[0].key.endswith(f"{390:020d}-r")  # the newest of them


def _wait(predicate: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "not within 5 s"
        time.sleep(0.02)


def test_a_backlog_goes_over_several_rounds() -> None:
    barn = MemoryBarn()
    now = 1_800_000_000.0
    old = audit_day(now - 400 * 86400.0)
    barn.transaction([], [TxnOp(f"{AUDIT}{old}/{n:08d}", b"{}") for n in range(3000)])
    barn.transaction([], [TxnOp(f"{AUDIT}{old}/{n:08d}", b"{}") for n in range(3000, 6000)])
    retention = AuditRetention(barn, keep_for=90 * 86400.0)
    assert retention(now) == 5000  # at most five batches a round...
    assert retention(now + 0.05) == 1000  # ... and the next round goes on at once
    assert barn.scan(AUDIT) == []


def test_a_token_known_on_the_event_loop_is_one_checked_before_with_a_fresh_revocation_list(tmp_path: Path) -> None:
    """``ApiAuth.identify_known`` (no thread, no I/O) knows a cluster token only once the full
    check took it, and only while the revocation list needs no read; a revoked one is refused
    there too. Anything else goes to ``identify``."""
    import jwt

    from runink.core.control.store import ClusterStore
    from runink.core.server.auth import ApiAuth, Unauthenticated, new_key_file
    from runink.testing import plugin_manager

    new_key_file(tmp_path / "key.pem")
    tokens = ClusterTokens([tmp_path / "key.pem"])
    barn = MemoryBarn()
    tokens.revocations = Revocations(barn, max_ttl=MAX_TTL, leeway=LEEWAY)
    token, _ = tokens.mint("sa:ci", [Grant("admin", "team")], 600)
    jti = str(jwt.decode(token, options={"verify_signature": False})["jti"])
    headers = {"authorization": f"Bearer {token}"}
    with plugin_manager(("cluster-tokens", tokens), entrypoints=False) as manager:
        auth = ApiAuth(manager, ClusterStore(barn), tokens=tokens)
        assert auth.identify_known(headers) is None  # never checked: the hooks decide
        assert auth.identify(headers, None).subject == "sa:ci"
        known = auth.identify_known(headers)
        assert known is not None and known.subject == "sa:ci"
        tokens.revocations.forget_cache()  # (the list is due to be read again)
        assert auth.identify_known(headers) is None
        tokens.revocations.revoke_token(jti, "sa:ci", None, by="root")
        with pytest.raises(Unauthenticated, match="revoked"):
            auth.identify(headers, None)  # (reads the list: fresh again)
        with pytest.raises(Unauthenticated, match="revoked"):
            auth.identify_known(headers)
        assert auth.identify_known({}) is None  # no token: the full path says why
    barn.close()


def test_a_herds_tokens_die_with_it_and_hold_nothing_in_a_herd_made_again_under_its_name(cluster: Cluster) -> None:
    """A herd admin's minted token outlived the herd's deletion and held admin in a new herd of
    the same name, another tenant's (its secrets, jobs, bindings): a review's run."""
    admin = cluster.token("cluster-admin", CLUSTER, "root")
    bearer = {"Authorization": f"Bearer {admin}"}
    team_admin = cluster.token("admin", "team", "boss")
    minted = cluster.http.post(
        "/v1/herds/team/tokens",
        json={"name": "backdoor", "role": "admin", "ttl": 90 * 86400},
        headers={"Authorization": f"Bearer {team_admin}"},
    )
    assert minted.status_code == 201, minted.text
    backdoor = minted.json()["token"]
    # a token lives no longer than the one that minted it (600 s here, not 90 days)
    assert minted.json()["expires"] - time.time() <= 601
    other = cluster.token("runner", "other", "bystander")
    # signed before the deletion by a server whose clock runs 20 s ahead (its iat after the deletion's)
    ahead = cluster.tokens.mint("sa:skewed", [Grant("admin", "team")], 600, now=time.time() + 20)[0]
    assert cluster.get(backdoor).status_code == 200
    refused = cluster.http.delete("/v1/herds/team", headers=bearer)  # (a job of the fixture still runs)
    assert refused.status_code == 409 and cluster.get(backdoor).status_code == 200  # (no token lost)
    for job in cluster.http.get("/v1/jobs", params={"herd": "team"}, headers=bearer).json()["jobs"]:
        cluster.http.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer).raise_for_status()
    assert cluster.http.delete("/v1/herds/team", headers=bearer).status_code == 204
    assert cluster.http.post("/v1/herds", json={"name": "team"}, headers=bearer).status_code == 201
    for token in (backdoor, team_admin, ahead):
        answer = cluster.get(token)
        assert answer.status_code == 401 and "every token of herd team issued up to" in answer.json()["detail"]
    assert cluster.http.get("/v1/herds/other", headers={"Authorization": f"Bearer {other}"}).status_code == 200
    # a token signed since, by a server that had read the deletion, holds the new herd's role at
    # once (its epoch); one of an earlier version (no epoch) counts from LEEWAY seconds on
    assert cluster.get(cluster.token("viewer", "team", "new")).status_code == 200
    revocations = cluster.tokens.revocations
    assert revocations is not None
    assert revocations.why_revoked("herd:team", None, time.time() + LEEWAY - 2) is not None
    assert revocations.why_revoked("herd:team", None, time.time() + LEEWAY + 2) is None


def test_a_herd_admin_revokes_every_token_of_the_herd(cluster: Cluster) -> None:
    """When another admin leaves: the service accounts they minted cannot be found one by one."""
    team_admin, outsider = cluster.token("admin", "team", "boss"), cluster.token("admin", "other", "x")
    kept_elsewhere = cluster.token("runner", "other", "y")
    minted = cluster.http.post(
        "/v1/herds/team/tokens",
        json={"name": "left-behind", "role": "runner", "ttl": 300},
        headers={"Authorization": f"Bearer {team_admin}"},
    ).json()["token"]
    refused = cluster.http.post("/v1/herds/team/tokens/revoke", headers={"Authorization": f"Bearer {outsider}"})
    assert refused.status_code == 403
    # refused alike whether the herd exists: a 404 told anyone which herds there are (a review)
    nowhere = cluster.http.post("/v1/herds/payroll/tokens/revoke", headers={"Authorization": f"Bearer {outsider}"})
    assert nowhere.status_code == 403, nowhere.text
    done = cluster.http.post("/v1/herds/team/tokens/revoke", headers={"Authorization": f"Bearer {team_admin}"})
    assert done.status_code == 200 and done.json()["revoked"]["herd"] == "team", done.text
    for token in (minted, team_admin):
        assert cluster.get(token).status_code == 401
    assert cluster.http.get("/v1/herds/other", headers={"Authorization": f"Bearer {kept_elsewhere}"}).status_code == 200
    admin = cluster.token("cluster-admin", CLUSTER, "root")
    assert ("sa:boss", "team", True) in [(r["subject"], r["herd"], r["allowed"]) for r in cluster.audit(admin)]


def test_a_read_begun_before_a_change_made_here_does_not_hide_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request whose read of the bindings (or of the revocations) began before this server
    removed a binding (or revoked a token) cached what it read after the change: the removed
    role and the revoked token counted for another second on the server that changed them."""
    from runink.core.control.store import ClusterStore
    from runink.core.server import auth as auth_module
    from runink.core.server.auth import ApiAuth

    store = ClusterStore(MemoryBarn())
    api_auth = ApiAuth(None, store, insecure=True)
    reads: list[str] = []

    def read_across_a_change(_store: Any, herd: str) -> list[Any]:
        reads.append(herd)
        if len(reads) == 1:
            api_auth.forget_bindings(herd)  # (an unbind on this server, while this read was in flight)
        return []

    monkeypatch.setattr(auth_module, "bindings", read_across_a_change)
    api_auth._read_bindings("team")
    api_auth._read_bindings("team")
    assert len(reads) == 2  # the first read was not kept
    api_auth._read_bindings("team")
    assert len(reads) == 2  # the second was
    barn = MemoryBarn()
    revocations = Revocations(barn, max_ttl=MAX_TTL, leeway=LEEWAY)
    real_scan = barn.scan
    scans: list[str] = []

    def scan_across_a_revoke(prefix: str, **kwargs: Any) -> Any:
        found = real_scan(prefix, **kwargs)  # (read before the revocation is written)
        scans.append(prefix)
        if len(scans) == 1:
            revocations.revoke_token("abc", "sa:ci", time.time() + 60, "root")
        return found

    monkeypatch.setattr(barn, "scan", scan_across_a_revoke)
    assert revocations.why_revoked("sa:ci", "abc", time.time()) == "revoked"
    assert revocations.why_revoked("sa:ci", "abc", time.time()) == "revoked"


def test_revoking_a_node_spends_the_join_tokens_minted_for_it(cluster: Cluster, tmp_path: Path) -> None:
    """A join token minted before `runink nodes revoke NODE` gave the node a new certificate
    after it (a review's run): the node's revocation deletes its tokens not spent yet."""
    from runink.core.control.store import ClusterStore
    from runink.core.server import join, pki

    ca = pki.create_ca(tmp_path / "ca")
    store = ClusterStore(cluster.barn)
    join.mint(store, "n1", 600, ca.cert)
    join.mint(store, "n1", 600, ca.cert)
    join.mint(store, "n2", 600, ca.cert)
    admin = cluster.token("cluster-admin", CLUSTER, "root")
    assert cluster.revoke({"subject": "node:n1"}, admin).status_code == 200
    assert [json.loads(kv.value)["node"] for kv in store.barn.scan(join.JOIN)] == ["n2"]


def test_revoking_a_subject_again_renews_its_lease_instead_of_granting_another() -> None:
    """300 herd-wide revocations by a herd admin left 300 leases in the Barn (a review's run)."""
    barn = MemoryBarn()
    granted: list[float] = []
    real_grant = barn.grant_lease

    def counted(ttl: float) -> int:
        granted.append(ttl)
        return real_grant(ttl)

    barn.grant_lease = counted  # type: ignore[method-assign]
    revocations = Revocations(barn, max_ttl=MAX_TTL, leeway=LEEWAY)
    for _ in range(5):
        revocations.revoke_subject("herd:team", "sa:ops", ahead=LEEWAY)
    assert len(granted) == 1
    assert revocations.why_revoked("herd:team", None, time.time() + LEEWAY - 1) is not None


def test_a_subjects_revocation_is_told_by_epochs_not_by_the_servers_clocks(cluster: Cluster) -> None:
    """Tokens said when they were issued to the second, by their server's clock: one signed
    before a revocation by a server whose clock ran ahead outlived it, one signed after it by a
    server whose clock ran behind was refused (and a herd's own revocation covered 30 s on: a
    herd admin's new token after `token revoke --herd` was refused that long)."""
    import jwt

    admin = cluster.token("cluster-admin", CLUSTER, "root")
    team_admin = cluster.token("admin", "team", "boss")
    ahead = cluster.tokens.mint("sa:ci", [Grant("runner", "team")], 600, now=time.time() + 20)[0]
    assert cluster.get(ahead).status_code == 200
    assert cluster.revoke({"subject": "sa:ci"}, admin).status_code == 200
    assert "every token of sa:ci" in cluster.get(ahead).json()["detail"]  # signed before: refused
    behind = cluster.tokens.mint("sa:ci", [Grant("runner", "team")], 600, now=time.time() - 20)[0]
    assert cluster.get(behind).status_code == 200  # signed after: good
    revocations = cluster.tokens.revocations
    assert revocations is not None
    epoch = revocations.epochs(["sa:ci"])["sa:ci"]  # (its record's Barn revision)
    assert epoch > 0 and jwt.decode(behind, options={"verify_signature": False})["rev"] == {
        "sa:ci": epoch,
        "herd:team": 0,
    }
    assert cluster.revoke({"subject": "sa:ci"}, admin).status_code == 200  # again: epoch 2
    assert cluster.get(behind).status_code == 401
    # a herd's tokens revoked by its admin: the admin's next token is good at once
    done = cluster.http.post("/v1/herds/team/tokens/revoke", headers={"Authorization": f"Bearer {team_admin}"})
    assert done.status_code == 200 and cluster.get(team_admin).status_code == 401
    assert cluster.get(cluster.token("admin", "team", "boss")).status_code == 200
    # a token of an earlier version (no epochs) is judged by its iat, LEEWAY seconds on for a herd
    herd_epoch = revocations.epochs(["herd:team"])["herd:team"]
    assert revocations.why_revoked("herd:team", None, time.time() + LEEWAY - 2) is not None
    assert revocations.why_revoked("herd:team", None, time.time() + LEEWAY - 2, seen=herd_epoch) is None
    assert revocations.why_revoked("herd:team", None, time.time(), seen=herd_epoch - 1) is not None
    # one issued more than LEEWAY before the revocation is refused whatever epoch it carries
    assert revocations.why_revoked("herd:team", None, time.time() - LEEWAY - 2, seen=herd_epoch) is not None


def test_a_subjects_epoch_never_goes_back_when_its_record_lapses_or_two_revoke_at_once() -> None:
    """The epoch was a count kept in the record: once its lease ended, the next revocation
    counted from 1 again and a token minted after the first one (carrying 1) outlived it; two
    revocations at once could write the count backwards (a diff review's runs)."""
    now = [1_000_000.0]
    barn = MemoryBarn(clock=lambda: now[0], lease_check_interval=0.01)
    try:
        here = Revocations(barn, max_ttl=60, leeway=LEEWAY, clock=lambda: now[0])
        there = Revocations(barn, max_ttl=60, leeway=LEEWAY, clock=lambda: now[0])  # another server
        here.revoke_subject("sa:ci", by="root")
        seen = here.epochs(["sa:ci"])["sa:ci"]  # a token minted just after it carries this
        now[0] += 60 + LEEWAY + 1  # the record's lease ends (the token may live on)
        _wait(lambda: barn.scan(PREFIX) == [])
        assert here.epochs(["sa:ci"]) == {"sa:ci": 0}
        there.revoke_subject("sa:ci", by="root")
        assert here.epochs(["sa:ci"])["sa:ci"] > seen
        assert here.why_revoked("sa:ci", None, now[0] - 1, seen) is not None
        older = here.epochs(["sa:ci"])["sa:ci"]
        here.revoke_subject("sa:ci", by="root")
        there.revoke_subject("sa:ci", by="root")  # (a second at once: never back)
        assert here.epochs(["sa:ci"])["sa:ci"] > older
    finally:
        barn.close()


def test_a_server_that_cannot_read_revocations_answers_503_not_401(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid token got 401 "the revoked tokens cannot be read" while the Barn was away: a client
    told its good token is bad asks for another or gives up (a faults review's run)."""
    token = cluster.token("runner", "team")
    assert cluster.get(token).status_code == 200
    revocations = cluster.tokens.revocations
    assert revocations is not None

    def away(afresh: bool = False) -> None:
        raise RevocationsUnknown("the revoked tokens cannot be read (no leader)")

    monkeypatch.setattr(revocations, "_refresh", away)
    answer = cluster.get(token)
    assert answer.status_code == 503 and answer.headers.get("retry-after"), answer.text
    assert "cannot be read" in answer.json()["detail"]
    assert ClusterTokens.admin_refusal(cluster.tokens, f"Bearer {token}").startswith("the revoked tokens")
