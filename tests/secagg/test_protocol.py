"""SecAgg+ rounds driven directly through the client and server state machines.

Every message crosses the wire codec (encode, decode) on its way, as it would over
MQTT. Dropouts are meters that stop answering at a stage: ``Stage.SHARE`` means
after advertising keys, ``Stage.MASKED_INPUT`` after sharing, ``Stage.UNMASK``
after sending the masked input.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgspec
import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scipy import stats

from gridsim.exceptions import InvalidInputError, ProtocolError, RoundError
from gridsim.secagg import masking
from gridsim.secagg import messages as msg
from gridsim.secagg.client import SecAggClient
from gridsim.secagg.graph import min_degree, resolve_degree
from gridsim.secagg.messages import Stage
from gridsim.secagg.server import Outbox, RoundState, SecAggConfig, SecAggServer

from .reference import pairwise_seed, public_bytes

SESSION = "feeder-7"
D = 1000
GRAPH_SEED = bytes(range(32))


def _key(rng: random.Random) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))


def _wire(m: msg.SecAggMessage) -> msg.SecAggMessage:
    return msg.decode(msg.encode(m))


@dataclass
class Federation:
    """A server and its meters, all in one process."""

    server: SecAggServer
    clients: dict[int, SecAggClient]
    meter_keys: dict[int, Ed25519PrivateKey]
    server_key: Ed25519PrivateKey
    replies: dict[Stage, dict[int, msg.MeterMessage]] = field(default_factory=dict)
    requests: dict[Stage, dict[int, msg.ServerMessage]] = field(default_factory=dict)
    next_keys: dict[int, msg.AdvertiseKeys] = field(default_factory=dict)


def federation(
    n: int,
    config: SecAggConfig,
    *,
    seed: int = 0,
    random_bytes: Callable[[int], Callable[[int], bytes]] | None = None,
) -> Federation:
    rng = random.Random(seed)
    meters = sorted(rng.sample(range(1, 100_000), n))
    server_key = _key(rng)
    meter_keys = {m: _key(rng) for m in meters}
    public = {m: k.public_key() for m, k in meter_keys.items()}
    server = SecAggServer(server_key, SESSION, config)
    for m in meters:
        server.enroll(m, public[m])
    clients = {
        m: SecAggClient(
            m,
            meter_keys[m],
            server_key.public_key(),
            public,
            session=SESSION,
            **({} if random_bytes is None else {"random_bytes": random_bytes(m)}),
        )
        for m in meters
    }
    return Federation(server, clients, meter_keys, server_key)


def inputs_for(fed: Federation, seed: int = 1) -> dict[int, npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    return {m: rng.uniform(-1.2, 1.2, D).astype(np.float32) for m in fed.clients}


def run_round(
    fed: Federation,
    round: int,
    inputs: Mapping[int, npt.NDArray[np.float32]],
    drop: Mapping[Stage, set[int]] | None = None,
    *,
    verify: bool = True,
    until: Stage | None = None,
    refusals: list[str] | None = None,
    prepare: bool = False,
    gone_known: bool = False,
) -> Outbox:
    """Run one round; meters in ``drop[stage]`` stop answering from that stage on.

    With ``until``, stop once that stage's requests are out (they are in
    ``fed.requests``) and return the outbox that carried them. With ``refusals``, a
    meter that refuses a request (ProtocolError) goes silent, as over a real
    transport, and the reason is appended; without it the error propagates. With
    ``prepare``, meters prepare their masks, next round's keys and unmasking answers
    (twice) before masking, as the agent does while it trains (the keys go to
    ``fed.next_keys``).
    With ``gone_known``, the transport knows who went silent (their connection
    dropped, say) and each stage closes before its deadline.
    """
    drop = drop or {}
    server, now = fed.server, 0.0
    out = server.start_round(round, sorted(fed.clients), now, graph_seed=GRAPH_SEED)
    gone: set[int] = set()
    for stage in Stage:
        gone |= drop.get(stage, set())
        requests: dict[int, msg.ServerMessage] = dict(out.direct)
        if isinstance(out.broadcast, msg.AdvertiseRequest):
            # Every selected meter hears it, also those that advertised ahead.
            requests = {m: out.broadcast for m in out.broadcast.params.meters}
        elif out.broadcast is not None:
            requests = {m: out.broadcast for m in server.waiting_for}
        fed.requests[stage] = requests
        if until is stage:
            return out
        replies: dict[int, msg.MeterMessage] = {}
        for m, request in sorted(requests.items()):
            if m in gone:
                continue
            client, req = fed.clients[m], _wire(request)
            reply: msg.MeterMessage | None
            try:
                if isinstance(req, msg.AdvertiseRequest):
                    reply = client.advertise(req)
                    if reply is None:
                        continue  # advertised ahead
                elif isinstance(req, msg.ShareRequest):
                    reply = client.share_keys(req)
                elif isinstance(req, msg.MaskedInputRequest):
                    if prepare:
                        client.prepare_masked_input(req)
                        client.prepare_masked_input(req)
                        made = client.prepare_next_keys()
                        assert made is not None and client.prepare_next_keys() == made
                        client.prepare_unmask_answer()
                        client.prepare_unmask_answer()
                        fed.next_keys[m] = made
                    reply = client.masked_input(req, inputs[m])
                else:
                    assert isinstance(req, msg.UnmaskRequest)
                    reply = client.unmask(req)
            except ProtocolError as exc:
                if refusals is None:
                    raise
                refusals.append(str(exc))
                gone.add(m)
                continue
            replies[m] = reply
            server.receive(_wire(reply), now)
        fed.replies[stage] = replies
        if not server.stage_complete:
            with pytest.raises(RoundError, match="open until"):
                server.close_stage(now)
            if gone_known:
                # Knowing all but one of the silent ones gone is not enough.
                with pytest.raises(RoundError, match="open until"):
                    server.close_stage(now, gone=sorted(server.waiting_for)[1:])
            else:
                now = server.deadline or now
        plaintext = {m: c.quantized for m, c in fed.clients.items() if c.quantized is not None}
        out = server.close_stage(
            now, plaintext=plaintext if verify else None, gone=gone if gone_known else ()
        )
        if out.abandoned is not None or out.result is not None:
            return out
    raise AssertionError("the round neither finished nor was abandoned")


def _config(n: int, **kw: object) -> SecAggConfig:
    scale = masking.max_scale(1.0, 32, n) / 2
    return SecAggConfig(d=D, bits=32, clip=1.0, scale=scale, **kw)  # type: ignore[arg-type]


# ---- exactness under dropouts -------------------------------------------------------


@pytest.mark.parametrize("n", [10, 50])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("stage", [Stage.SHARE, Stage.MASKED_INPUT, Stage.UNMASK])
def test_sum_is_exact_with_dropouts(n: int, fraction: float, stage: Stage) -> None:
    fed = federation(n, _config(n), seed=n)
    inputs = inputs_for(fed)
    dropped = set(random.Random(7).sample(sorted(fed.clients), round(fraction * n)))
    out = run_round(fed, 1, inputs, {stage: dropped})

    assert out.abandoned is None and out.result is not None
    res = out.result
    counted = set(fed.clients) - dropped if stage is not Stage.UNMASK else set(fed.clients)
    assert set(res.survivors) == counted
    if stage is Stage.SHARE:
        assert set(res.absent) == dropped and res.dropped == ()
    if stage is Stage.MASKED_INPUT:
        assert set(res.dropped) == dropped and res.absent == ()
    assert res.verified is True
    # The decoded sum is the float sum of what the survivors put in, to quantisation error.
    p = fed.server.params
    assert p is not None
    clipped = {m: np.clip(inputs[m].astype(np.float64), -1.0, 1.0) for m in counted}
    want = np.sum([clipped[m] for m in counted], axis=0)
    assert res.out_of_range == 0
    assert np.max(np.abs(res.values - want)) < len(counted) / p.scale
    # A sparse graph (k < n - 1) when n is large, classic SecAgg when small.
    assert p.neighbors == (9 if n == 10 else 32)
    assert res.digests.keys() == set(res.survivors)


@pytest.mark.parametrize("stage", list(Stage))
def test_a_stage_closes_before_its_deadline_once_all_it_waits_for_are_gone(
    stage: Stage,
) -> None:
    fed = federation(30, _config(30, stage_timeout_s=60.0), seed=3)
    inputs = inputs_for(fed)
    dropped = set(random.Random(5).sample(sorted(fed.clients), 4))
    # Every stage closes at time 0, long before its 60 s deadline.
    out = run_round(fed, 1, inputs, {stage: dropped}, gone_known=True)
    assert out.abandoned is None and out.result is not None
    assert out.result.verified is True
    counted = set(fed.clients) - dropped if stage is not Stage.UNMASK else set(fed.clients)
    assert set(out.result.survivors) == counted


def test_exact_on_a_sparse_graph_with_a_narrow_modulus() -> None:
    # k = 12 of 49 possible neighbours; 20-bit words; 10% drop after sharing.
    n = 50
    config = SecAggConfig(d=D, bits=20, clip=1.0, scale=masking.max_scale(1.0, 20, n), neighbors=12)
    fed = federation(n, config, seed=3)
    dropped = set(random.Random(8).sample(sorted(fed.clients), 5))
    out = run_round(fed, 4, inputs_for(fed, 2), {Stage.MASKED_INPUT: dropped})
    assert out.result is not None and out.result.verified is True
    assert all(len(c.neighbors) == 12 for c in fed.clients.values())
    assert int(out.result.total.max()) < 2**20


# ---- too many dropouts --------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "reason"),
    [
        (Stage.SHARE, r"only 4 meters shared their secrets; at least 5 needed"),
        (Stage.MASKED_INPUT, r"only 4 meters sent a masked input; at least 5 needed"),
        (Stage.UNMASK, r"cannot recover the self-mask seed of meter \d+: \d of 5 shares arrived"),
    ],
)
def test_too_many_dropouts_abandon_the_round_and_the_next_round_works(
    stage: Stage, reason: str
) -> None:
    fed = federation(10, _config(10))
    inputs = inputs_for(fed)
    dropped = set(sorted(fed.clients)[:6])
    out = run_round(fed, 1, inputs, {stage: dropped})
    assert out.result is None and out.abandoned is not None
    assert out.abandoned == fed.server.abandon_reason
    assert fed.server.state is RoundState.ABANDONED and fed.server.result is None
    assert re.fullmatch(reason, out.abandoned)
    with pytest.raises(RoundError, match="no stage is open"):
        fed.server.close_stage(1e9)

    nxt = run_round(fed, 2, inputs_for(fed, 5))
    assert nxt.result is not None and nxt.result.verified is True
    assert len(nxt.result.survivors) == 10


def test_verify_flags_a_sum_that_differs_from_the_plaintext() -> None:
    fed = federation(10, _config(10))
    out = run_round(fed, 1, inputs_for(fed), until=Stage.UNMASK)
    assert isinstance(out.broadcast, msg.UnmaskRequest)
    for c in fed.clients.values():
        fed.server.receive(_wire(c.unmask(out.broadcast)), 0.0)
    plaintext = {m: c.quantized for m, c in fed.clients.items() if c.quantized is not None}
    first = sorted(plaintext)[0]
    off_by_one = plaintext[first].copy()
    off_by_one[17] += 1
    plaintext[first] = off_by_one
    final = fed.server.close_stage(0.0, plaintext=plaintext)
    assert final.result is not None and final.result.verified is False


def _shift_secret(share: bytes, holders: list[int]) -> bytes:
    """``share`` changed so that, with the other holders' shares, it moves the secret by one.

    Lagrange at zero: the secret is sum(lambda_i * y_i), so adding lambda_i^-1 to
    y_i adds one to the first 8-byte chunk of the secret, which stays well formed.
    """
    p = masking.SHAMIR_PRIME
    xi = masking.share_x(share)
    lam = 1
    for m in holders:
        xj = m + 1
        if xj != xi:
            lam = lam * xj * pow(xj - xi, -1, p) % p
    y0 = int.from_bytes(share[9:25], "little")
    y0 = (y0 + pow(lam, -1, p)) % p
    return share[:9] + y0.to_bytes(16, "little") + share[25:]


@pytest.mark.parametrize("crafted", [False, True])
def test_a_wrong_revealed_share_abandons_the_round_instead_of_corrupting_the_sum(
    crafted: bool,
) -> None:
    # Four meters go silent at unmasking, so each responder's self-mask seed has
    # exactly t = 5 shares and a wrong one cannot be outvoted. A flipped bit makes
    # the shares interpolate to no valid secret; a share crafted to shift the secret
    # by one interpolates fine and is caught by the meter's seed commitment.
    fed = federation(10, _config(10))
    out = run_round(fed, 1, inputs_for(fed), until=Stage.UNMASK)
    assert isinstance(out.broadcast, msg.UnmaskRequest)
    responders = sorted(fed.clients)[4:]
    cheat, victim = responders[0], responders[1]
    for m in responders:
        reply = fed.clients[m].unmask(out.broadcast)
        if m == cheat:
            shares = []
            for r in reply.seed_shares:
                if r.owner == victim:
                    holders = [h for h in responders if h != victim]
                    bad = (
                        _shift_secret(r.share, holders)
                        if crafted
                        else r.share[:-1] + bytes([r.share[-1] ^ 1])
                    )
                    r = msg.RevealedShare(owner=victim, share=bad)
                shares.append(r)
            reply = msg.sign(
                msgspec.structs.replace(reply, seed_shares=shares), fed.meter_keys[cheat]
            )
        fed.server.receive(_wire(reply), 0.0)
    assert fed.server.deadline is not None
    final = fed.server.close_stage(fed.server.deadline)
    assert final.result is None and final.abandoned is not None
    if crafted:
        assert final.abandoned == (
            f"the recovered self-mask seed of meter {victim} does not match its commitment"
        )
    else:
        assert final.abandoned.startswith(f"the shares of meter {victim}'s self-mask seed disagree")


def test_server_refuses_a_message_after_the_stage_deadline() -> None:
    fed = federation(10, _config(10, stage_timeout_s=5.0))
    out = fed.server.start_round(1, sorted(fed.clients), 100.0, graph_seed=GRAPH_SEED)
    assert isinstance(out.broadcast, msg.AdvertiseRequest)
    m = sorted(fed.clients)[0]
    reply = fed.clients[m].advertise(out.broadcast)
    with pytest.raises(ProtocolError, match=r"late: arrived at 105\.5, the stage closed at 105\.0"):
        fed.server.receive(_wire(reply), 105.5)
    assert m in fed.server.waiting_for


# ---- a malicious server -------------------------------------------------------------


def _signed_unmask(fed: Federation, survivors: list[int], dropped: list[int]) -> msg.UnmaskRequest:
    request = fed.requests[Stage.UNMASK]
    first = next(iter(request.values()))
    assert isinstance(first, msg.UnmaskRequest)
    forged = msgspec.structs.replace(first, survivors=survivors, dropped=dropped)
    return msg.sign(forged, fed.server_key)


def test_client_refuses_a_meter_named_both_surviving_and_dropped() -> None:
    fed = federation(10, _config(10))
    out = run_round(fed, 1, inputs_for(fed), until=Stage.UNMASK)
    assert isinstance(out.broadcast, msg.UnmaskRequest)
    meters = sorted(fed.clients)
    u, victim = meters[0], meters[1]
    # Every meter sent its masked input; the server claims `victim` also dropped, to
    # collect both the share of its self-mask seed and of its mask key.
    bad = _signed_unmask(fed, meters, [victim])
    with pytest.raises(ProtocolError, match=f"meter {victim} as both surviving and dropped"):
        fed.clients[u].unmask(bad)
    # The refusal changed nothing: the honest request is still answered.
    reply = fed.clients[u].unmask(out.broadcast)
    assert {r.owner for r in reply.seed_shares} == set(meters) - {u}
    assert reply.key_shares == []


def test_client_answers_one_unmasking_request_per_round() -> None:
    # Two requests with disjoint lists would give the server both kinds of share.
    fed = federation(10, _config(10))
    out = run_round(fed, 1, inputs_for(fed), until=Stage.UNMASK)
    assert isinstance(out.broadcast, msg.UnmaskRequest)
    meters = sorted(fed.clients)
    u, victim = meters[0], meters[1]
    first = fed.clients[u].unmask(out.broadcast)
    assert victim in {r.owner for r in first.seed_shares}
    second = _signed_unmask(fed, [m for m in meters if m != victim], [victim])
    with pytest.raises(ProtocolError, match="out of order"):
        fed.clients[u].unmask(second)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"threshold": 16}, "threshold 16 is not a majority of 32 neighbours"),
        ({"neighbors": 4}, "degree 4 is not an even degree of at least 12"),
        ({"neighbors": 31}, "degree 31 is not an even degree"),
    ],
)
def test_client_refuses_round_parameters_that_weaken_its_privacy(
    change: dict[str, int], reason: str
) -> None:
    # Below a majority two disjoint sets of neighbours could each hold t shares;
    # too few neighbours could leave a meter among meters the server controls.
    fed = federation(50, _config(50))
    out = fed.server.start_round(1, sorted(fed.clients), 0.0, graph_seed=GRAPH_SEED)
    assert isinstance(out.broadcast, msg.AdvertiseRequest)
    assert out.broadcast.params.neighbors == 32
    params = msgspec.structs.replace(out.broadcast.params, **change)
    bad = msg.sign(msgspec.structs.replace(out.broadcast, params=params), fed.server_key)
    client = next(iter(fed.clients.values()))
    with pytest.raises(ProtocolError, match=reason):
        client.advertise(bad)
    assert client.advertise(out.broadcast).round == 1


def test_client_refuses_a_roster_with_a_substituted_key() -> None:
    # The server swaps a neighbour's mask key for its own: the meter's signature fails.
    fed = federation(10, _config(10))
    out = run_round(fed, 1, inputs_for(fed), until=Stage.SHARE)
    meter = min(out.direct)
    request = out.direct[meter]
    assert isinstance(request, msg.ShareRequest)
    roster = list(request.roster)
    # The meter's neighbours get only their own and their neighbours' advertisements.
    assert len(roster) < 10 or len(roster) == len(fed.clients)
    other = next(i for i, adv in enumerate(roster) if adv.meter != meter)
    roster[other] = msg.sign(
        msgspec.structs.replace(roster[other], agree_key=b"\x09" * 32), fed.server_key
    )
    bad = msg.sign(msgspec.structs.replace(request, roster=roster), fed.server_key)
    with pytest.raises(ProtocolError, match="bad signature on AdvertiseKeys"):
        fed.clients[meter].share_keys(bad)


# ---- forged, replayed and out-of-order messages -------------------------------------


def test_server_rejects_and_logs_a_forged_meter_message(caplog: pytest.LogCaptureFixture) -> None:
    fed = federation(10, _config(10))
    m, other = sorted(fed.clients)[:2]
    out_req = fed.server.start_round(1, sorted(fed.clients), 0.0, graph_seed=GRAPH_SEED)
    assert isinstance(out_req.broadcast, msg.AdvertiseRequest)
    genuine = fed.clients[m].advertise(out_req.broadcast)
    forged = msg.sign(genuine, fed.meter_keys[other])  # signed by the wrong meter
    with pytest.raises(ProtocolError, match="bad signature"):
        fed.server.receive(_wire(forged), 0.0)
    assert fed.server.rejected[-1].meter == m
    assert "bad signature" in caplog.text
    fed.server.receive(_wire(genuine), 0.0)  # the genuine one still counts
    assert m not in fed.server.waiting_for
    # A meter that never enrolled cannot take part, whatever it signs.
    stranger = msgspec.structs.replace(genuine, meter=424242)
    with pytest.raises(ProtocolError, match="meter 424242 is not enrolled"):
        fed.server.receive(_wire(msg.sign(stranger, fed.meter_keys[other])), 0.0)


def test_server_rejects_replayed_and_out_of_stage_messages() -> None:
    fed = federation(10, _config(10))
    inputs = inputs_for(fed)
    run_round(fed, 1, inputs)
    old = fed.replies[Stage.MASKED_INPUT]
    out = run_round(fed, 2, inputs, until=Stage.SHARE)
    m = sorted(fed.clients)[0]
    with pytest.raises(ProtocolError, match="replayed or out-of-round: round 1, open 2"):
        fed.server.receive(_wire(old[m]), 0.0)
    # A second advertisement during the share stage is out of order (round 2's
    # came ahead, in round 1's unmasking response).
    unmasked = fed.replies[Stage.UNMASK][m]
    assert isinstance(unmasked, msg.UnmaskResponse) and unmasked.next is not None
    again = unmasked.next
    with pytest.raises(ProtocolError, match="out of order: ADVERTISE message during SHARE"):
        fed.server.receive(_wire(again), 0.0)
    # A message whose stage field lies about its type.
    share_req = out.direct[m]
    assert isinstance(share_req, msg.ShareRequest)
    share = fed.clients[m].share_keys(share_req)
    lying = msg.sign(msgspec.structs.replace(share, stage=Stage.ADVERTISE), fed.meter_keys[m])
    with pytest.raises(ProtocolError, match="claims stage"):
        fed.server.receive(_wire(lying), 0.0)
    fed.server.receive(_wire(share), 0.0)
    with pytest.raises(ProtocolError, match="duplicate ShareKeys"):
        fed.server.receive(_wire(share), 0.0)
    assert [r.round for r in fed.server.rejected] == [2, 2, 2, 2]


def test_a_client_recognises_a_request_it_answered_and_only_a_genuine_one() -> None:
    # After a reconnect the aggregator repeats its open request; a meter that
    # answered it sends its answer again instead of refusing it. Only a genuine
    # request of this round, of a stage already answered, counts as such.
    fed, m, client, masked_req = _masked_input_request()
    share_req = fed.requests[Stage.SHARE][m]
    assert client.answered(_wire(share_req))
    forged = msgspec.structs.replace(share_req, sig=bytes(64))
    assert not client.answered(_wire(forged))
    assert not client.answered(_wire(masked_req))  # not answered yet
    assert not client.answered(_wire(fed.replies[Stage.SHARE][m]))  # a meter's message
    later = run_round(fed, 2, inputs_for(fed), until=Stage.SHARE)
    assert not client.answered(_wire(share_req))  # an earlier round's
    assert not client.answered(_wire(later.direct[m]))  # this round's, not answered


# ---- advertising ahead ---------------------------------------------------------------


def test_a_round_whose_meters_all_advertised_ahead_opens_at_sharing() -> None:
    fed = federation(20, _config(20))
    inputs = inputs_for(fed)
    first = run_round(fed, 1, inputs)
    assert first.result is not None and first.result.verified is True
    out = fed.server.start_round(2, sorted(fed.clients), 0.0, graph_seed=GRAPH_SEED)
    assert isinstance(out.broadcast, msg.AdvertiseRequest)
    assert out.broadcast.ready == sorted(fed.clients)
    assert fed.server.stage_complete  # nobody to wait for
    second = run_round(fed, 3, inputs)  # supersedes round 2; 3's keys were not sent ahead
    assert second.result is not None and second.result.verified is True
    assert len(fed.replies[Stage.ADVERTISE]) == 20
    third = run_round(fed, 4, inputs)
    assert third.result is not None and third.result.verified is True
    assert fed.replies[Stage.ADVERTISE] == {}  # every advertisement came ahead
    assert len(third.result.survivors) == 20


def test_meters_that_did_not_unmask_advertise_again_and_count() -> None:
    fed = federation(30, _config(30))
    inputs = inputs_for(fed)
    late = set(sorted(fed.clients)[:3])
    first = run_round(fed, 1, inputs, {Stage.UNMASK: late})
    assert first.result is not None and first.result.verified is True
    second = run_round(fed, 2, inputs)
    assert second.result is not None and second.result.verified is True
    assert set(fed.replies[Stage.ADVERTISE]) == late  # only they had to answer
    assert set(second.result.survivors) == set(fed.clients)


def test_a_meter_that_lost_the_keys_it_sent_ahead_sits_out_one_round() -> None:
    # A restarted meter is listed as ready but holds no keys: it refuses the round,
    # the others finish it exactly, and it is back in the round after.
    fed = federation(20, _config(20))
    inputs = inputs_for(fed)
    run_round(fed, 1, inputs)
    m = sorted(fed.clients)[5]
    old = fed.clients[m]
    fed.clients[m] = SecAggClient(
        m, fed.meter_keys[m], fed.server_key.public_key(), old._peer_keys, session=SESSION
    )
    refusals: list[str] = []
    second = run_round(fed, 2, inputs, refusals=refusals)
    assert refusals == [
        "the server holds an advertisement of this meter for round 2, but this meter sent none"
    ]
    assert second.result is not None and second.result.verified is True
    assert m in second.result.absent
    third = run_round(fed, 3, inputs)
    assert third.result is not None and third.result.verified is True
    assert m in third.result.survivors


def test_keys_sent_ahead_are_sent_again_unchanged_to_a_server_without_them() -> None:
    # A restarted aggregator never saw the advertisements sent ahead: each meter
    # answers with the very keys it sent, never a second set for the same round.
    fed = federation(10, _config(10))
    inputs = inputs_for(fed)
    run_round(fed, 1, inputs)
    ahead = {}
    for m, r in fed.replies[Stage.UNMASK].items():
        assert isinstance(r, msg.UnmaskResponse)
        ahead[m] = r.next
    fresh = SecAggServer(fed.server_key, SESSION, _config(10))
    for m, key in fed.meter_keys.items():
        fresh.enroll(m, key.public_key())
    fed.server = fresh
    out = run_round(fed, 2, inputs)
    assert out.result is not None and out.result.verified is True
    assert fed.replies[Stage.ADVERTISE] == ahead


def test_keys_made_while_training_are_the_ones_sent_ahead() -> None:
    fed = federation(10, _config(10))
    inputs = inputs_for(fed)
    out = run_round(fed, 1, inputs, prepare=True)
    assert out.result is not None and out.result.verified is True
    sent = {m: r.next for m, r in fed.replies[Stage.UNMASK].items()}
    assert sent == fed.next_keys and all(a.round == 2 for a in sent.values())
    # The next round opens at sharing with them, and sums exactly.
    out = run_round(fed, 2, inputs, prepare=True)
    assert out.result is not None and out.result.verified is True
    assert fed.replies[Stage.ADVERTISE] == {}


def test_server_refuses_an_advertisement_ahead_that_is_not_the_next_rounds() -> None:
    fed = federation(10, _config(10))
    inputs = inputs_for(fed)
    out = run_round(fed, 1, inputs, until=Stage.UNMASK)
    request = out.broadcast
    assert isinstance(request, msg.UnmaskRequest)
    m, other = sorted(fed.clients)[:2]
    genuine = fed.clients[m].unmask(_wire(request))  # type: ignore[arg-type]
    assert genuine.next is not None and genuine.next.round == 2
    key = fed.meter_keys[m]
    wrong_round = msg.sign(msgspec.structs.replace(genuine.next, round=3), key)
    theirs = msg.sign(msgspec.structs.replace(genuine.next, meter=other), fed.meter_keys[other])
    forged = msg.sign(genuine.next, fed.meter_keys[other])  # not m's signature
    for bad, reason in [
        (wrong_round, "not its own for the next round"),
        (theirs, "not its own for the next round"),
        (forged, "bad signature"),
    ]:
        with pytest.raises(ProtocolError, match=reason):
            fed.server.receive(
                _wire(msg.sign(msgspec.structs.replace(genuine, next=bad), key)), 0.0
            )
    fed.server.receive(_wire(genuine), 0.0)
    assert m not in fed.server.waiting_for


def test_server_refuses_masked_data_that_its_signed_digest_does_not_cover() -> None:
    # The signature covers the masked vector through its SHA-256: a vector swapped
    # under a genuine signature, or a digest changed with it, is refused.
    fed = federation(10, _config(10))
    inputs = inputs_for(fed)
    out = run_round(fed, 1, inputs, until=Stage.MASKED_INPUT)
    m = min(out.direct)
    request = out.direct[m]
    assert isinstance(request, msg.MaskedInputRequest)
    genuine = fed.clients[m].masked_input(request, inputs[m])
    data = bytearray(genuine.data)
    data[0] ^= 1
    swapped = msgspec.structs.replace(genuine, data=bytes(data))
    with pytest.raises(ProtocolError, match="does not match its SHA-256"):
        fed.server.receive(_wire(swapped), 0.0)
    rehashed = msgspec.structs.replace(swapped, digest=hashlib.sha256(data).digest())
    with pytest.raises(ProtocolError, match="bad signature"):
        fed.server.receive(_wire(rehashed), 0.0)
    fed.server.receive(_wire(genuine), 0.0)  # the genuine one still counts
    assert m not in fed.server.waiting_for


def test_masks_prepared_before_the_input_give_the_exact_sum() -> None:
    fed = federation(30, _config(30))
    drop = {Stage.MASKED_INPUT: set(sorted(fed.clients)[:3])}
    out = run_round(fed, 1, inputs_for(fed), drop, prepare=True)
    assert out.result is not None and out.result.verified is True
    assert len(out.result.dropped) == 3


def test_an_unmasking_answer_built_ahead_goes_only_when_no_neighbour_dropped() -> None:
    fed = federation(40, _config(40, neighbors=12))
    inputs = inputs_for(fed)
    dropped = sorted(fed.clients)[0]
    out = run_round(
        fed, 1, inputs, {Stage.MASKED_INPUT: {dropped}}, prepare=True, until=Stage.UNMASK
    )
    request = _wire(out.broadcast)
    assert isinstance(request, msg.UnmaskRequest) and request.dropped == [dropped]
    for m in request.survivors:
        client = fed.clients[m]
        built = client._answer_ahead
        assert built is not None  # every survivor prepared one while "training"
        reply = client.unmask(request)
        if dropped in client.neighbors:
            # Its neighbour dropped: the answer is made now, with that one's key share.
            assert reply is not built[1]
            assert [r.owner for r in reply.key_shares] == [dropped]
        else:
            assert reply is built[1] and reply.key_shares == []
        assert reply.next is fed.next_keys[m]
        msg.verify_signature(reply, fed.meter_keys[m].public_key())
        fed.server.receive(_wire(reply), 0.0)
    neighbours = [dropped in fed.clients[m].neighbors for m in request.survivors]
    assert any(neighbours) and not all(neighbours)
    plaintext = {m: c.quantized for m, c in fed.clients.items() if c.quantized is not None}
    result = fed.server.close_stage(0.0, plaintext=plaintext).result
    assert result is not None and result.verified is True


def _masked_input_request(
    n: int = 10,
) -> tuple[Federation, int, SecAggClient, msg.MaskedInputRequest]:
    """A federation stopped with its masked-input requests out, one meter and its request."""
    fed = federation(n, _config(n))
    out = run_round(fed, 1, inputs_for(fed), until=Stage.MASKED_INPUT)
    m = min(out.direct)
    request = out.direct[m]
    assert isinstance(request, msg.MaskedInputRequest)
    return fed, m, fed.clients[m], request


def test_preparing_refuses_a_tampered_share_and_keeps_nothing() -> None:
    fed, m, client, request = _masked_input_request()
    first = request.shares[0]
    flipped = first.ciphertext[:-1] + bytes([first.ciphertext[-1] ^ 1])
    tampered = msg.sign(
        msgspec.structs.replace(
            request,
            shares=[msgspec.structs.replace(first, ciphertext=flipped), *request.shares[1:]],
        ),
        fed.server_key,
    )
    with pytest.raises(ProtocolError, match=f"share from meter {first.sender} fails auth"):
        client.prepare_masked_input(tampered)
    with pytest.raises(ProtocolError, match=f"share from meter {first.sender} fails auth"):
        client.masked_input(tampered, inputs_for(fed)[m])
    short = msg.sign(
        msgspec.structs.replace(
            request,
            shares=[msgspec.structs.replace(first, ciphertext=first.ciphertext[:20])],
        ),
        fed.server_key,
    )
    with pytest.raises(ProtocolError, match=f"share from meter {first.sender} is too short"):
        client.prepare_masked_input(short)
    # The genuine request still works, and masks prepared for it are used once.
    client.prepare_masked_input(request)
    reply = client.masked_input(request, inputs_for(fed)[m])
    assert reply.meter == m and client.expecting is Stage.UNMASK
    with pytest.raises(ProtocolError, match="out of order"):
        client.prepare_masked_input(request)


def test_a_verified_request_does_not_vouch_for_a_changed_copy() -> None:
    # A client verifies the masked-input request once (when it prepares) and skips
    # the check for an identical copy; a copy that differs in anything but keeps the
    # signature must be verified afresh, and fails.
    fed, m, client, request = _masked_input_request()
    client.prepare_masked_input(request)
    fewer = msgspec.structs.replace(request, shares=request.shares[1:])  # same signature
    with pytest.raises(ProtocolError, match="bad signature on MaskedInputRequest"):
        client.masked_input(fewer, inputs_for(fed)[m])
    reply = client.masked_input(_wire(request), inputs_for(fed)[m])  # an equal copy
    assert reply.meter == m and client.expecting is Stage.UNMASK


def test_a_degenerate_survivor_key_abandons_the_round_with_its_reason() -> None:
    # Honest meters refuse a low-order key when they share; only a survivor and a
    # dropped neighbour that both cheat bring one to the server's mask recovery.
    # Changing the advertisement the server stored stands in for that pair.
    fed = federation(10, _config(10))
    u = sorted(fed.clients)[0]
    out = run_round(fed, 1, inputs_for(fed), {Stage.MASKED_INPUT: {u}}, until=Stage.UNMASK)
    server = fed.server
    v = min(server._graph[u])
    server._adverts[v] = msgspec.structs.replace(server._adverts[v], agree_key=bytes(32))
    assert out.broadcast is not None
    for m in sorted(server.waiting_for):
        server.receive(_wire(fed.clients[m].unmask(_wire(out.broadcast))), 0.0)
    closed = server.close_stage(0.0)
    assert closed.result is None
    assert closed.abandoned is not None
    assert f"meter {v} advertised a degenerate X25519 key" in closed.abandoned


def test_client_rejects_forged_replayed_and_out_of_order_requests(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fed = federation(10, _config(10))
    inputs = inputs_for(fed)
    run_round(fed, 1, inputs)
    m = sorted(fed.clients)[0]
    client = fed.clients[m]
    old_adv = fed.requests[Stage.ADVERTISE][m]
    assert isinstance(old_adv, msg.AdvertiseRequest)
    out = run_round(fed, 2, inputs, until=Stage.SHARE)
    share_req = out.direct[m]
    assert isinstance(share_req, msg.ShareRequest)
    with pytest.raises(ProtocolError, match="replayed round: round 1 not after round 2"):
        client.advertise(old_adv)
    # Round 1's share request, replayed in round 2.
    old_share = msgspec.structs.replace(share_req, round=1)
    with pytest.raises(ProtocolError, match="replayed or out-of-round"):
        client.share_keys(msg.sign(old_share, fed.server_key))
    # Signed by someone other than the server.
    with pytest.raises(ProtocolError, match="bad signature on ShareRequest"):
        client.share_keys(msg.sign(share_req, fed.meter_keys[m]))
    # The unmasking request before the masked input.
    early = msg.UnmaskRequest(
        v=msg.SECAGG_WIRE_VERSION,
        session=SESSION,
        round=2,
        stage=Stage.UNMASK,
        sig=b"",
        survivors=[],
        dropped=[],
    )
    with pytest.raises(ProtocolError, match="out of order: UNMASK request while waiting for SHARE"):
        client.unmask(msg.sign(early, fed.server_key))
    assert caplog.text.count(f"secagg meter {m}: rejected") == 4
    # After all that, the genuine request is still accepted.
    assert client.share_keys(share_req).meter == m


# ---- privacy of one meter's masked vector -------------------------------------------


def _seeded(seed: int) -> Callable[[int], Callable[[int], bytes]]:
    def source(meter: int) -> Callable[[int], bytes]:
        rng = random.Random(seed * 1_000_003 + meter)
        return rng.randbytes

    return source


@pytest.mark.parametrize("bits", [32, 20])
def test_servers_view_of_a_masked_vector_is_uniform(bits: int) -> None:
    # The meter sends all zeros, the most structured input there is. The server sees
    # its packed masked vector; chi-square of the top 8 bits (256 bins) and of the
    # packed bytes must not tell it from uniform over Z_{2^bits}. Key material comes
    # from a seeded source so the test is deterministic; false-alarm rate 1e-6 each.
    n, d = 10, 1 << 16
    config = SecAggConfig(d=d, bits=bits, clip=1.0, scale=masking.max_scale(1.0, bits, n))
    fed = federation(n, config, random_bytes=_seeded(bits))
    inputs = {m: np.zeros(d, dtype=np.float32) for m in fed.clients}
    run_round(fed, 1, inputs, until=Stage.UNMASK)
    m = sorted(fed.clients)[0]
    seen = fed.replies[Stage.MASKED_INPUT][m]
    assert isinstance(seen, msg.MaskedInput)
    values = masking.unpack(seen.data, bits, d).astype(np.int64)
    top = np.bincount(values >> (bits - 8), minlength=256)
    assert stats.chisquare(top).pvalue > 1e-6
    byte_hist = np.bincount(np.frombuffer(seen.data, dtype=np.uint8), minlength=256)
    assert stats.chisquare(byte_hist).pvalue > 1e-6
    # The same test does see structure where there is some: the unmasked input.
    real = np.random.default_rng(0).normal(0.0, 0.3, d).astype(np.float32)
    q = masking.quantize(real, 1.0, bits, masking.max_scale(1.0, bits, n), seed=bytes(32))
    plain_top = np.bincount(q.values.astype(np.int64) >> (bits - 8), minlength=256)
    assert stats.chisquare(plain_top).pvalue < 1e-6


# ---- "all" neighbours is classic SecAgg ---------------------------------------------


def test_all_neighbours_masks_exactly_as_classic_secagg() -> None:
    # With "all", a meter's masked input is Bonawitz et al.'s: its input plus its
    # self mask plus one pairwise mask with every other meter that shared.
    n = 8
    source = _seeded(99)
    fed = federation(n, _config(n, neighbors="all"), random_bytes=source)
    inputs = inputs_for(fed)
    run_round(fed, 3, inputs, until=Stage.UNMASK)
    meters = sorted(fed.clients)
    secrets_of = {}
    for m in meters:
        draw = source(m)
        enc, agree, self_seed = draw(32), draw(32), draw(32)
        del enc
        secrets_of[m] = (X25519PrivateKey.from_private_bytes(agree), self_seed)
    p = fed.server.params
    assert p is not None and p.neighbors == n - 1 and p.threshold == n // 2
    for u in meters:
        assert fed.clients[u].neighbors == set(meters) - {u}
        agree_u, self_seed = secrets_of[u]
        q = fed.clients[u].quantized
        assert q is not None
        want = q.astype(np.uint64) + masking.mask(
            self_seed, SESSION.encode(), 3, D, stream=masking.self_stream_id(u), bits=32
        ).astype(np.uint64)
        for v in meters:
            if v == u:
                continue
            seed = pairwise_seed(agree_u, public_bytes(secrets_of[v][0]), SESSION, 3, u, v)
            pm = masking.mask(
                seed, SESSION.encode(), 3, D, stream=masking.pair_stream_id(u, v), bits=32
            ).astype(np.uint64)
            want = want + pm if u < v else want - pm
        sent = fed.replies[Stage.MASKED_INPUT][u]
        assert isinstance(sent, msg.MaskedInput)
        got = masking.unpack(sent.data, 32, D)
        assert np.array_equal(got, (want % 2**32).astype(np.uint32))


# ---- any dropout pattern: the exact sum or a stated reason, never a wrong sum -------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(3, 16),
    k=st.one_of(st.just("all"), st.integers(1, 15)),
    drops=st.lists(st.tuples(st.sampled_from(list(Stage)), st.integers(0, 15)), max_size=10),
    seed=st.integers(0, 2**16),
)
def test_any_dropout_pattern_gives_the_exact_sum_or_a_stated_reason(
    n: int, k: int | str, drops: list[tuple[Stage, int]], seed: int
) -> None:
    d = 16
    config = SecAggConfig(
        d=d,
        bits=24,
        clip=1.0,
        scale=masking.max_scale(1.0, 24, n),
        neighbors=k,  # type: ignore[arg-type]
    )
    fed = federation(n, config, seed=seed)
    meters = sorted(fed.clients)
    if k != "all" and resolve_degree(n, k) < min_degree(n):
        with pytest.raises(InvalidInputError, match="below the minimum"):
            fed.server.start_round(1, meters, 0.0)
        return
    drop: dict[Stage, set[int]] = {}
    for stage, i in drops:
        drop.setdefault(stage, set()).add(meters[i % n])
    rng = np.random.default_rng(seed)
    inputs = {m: rng.uniform(-1, 1, d).astype(np.float32) for m in meters}
    refusals: list[str] = []
    out = run_round(fed, 1, inputs, drop, refusals=refusals)
    # An honest meter refuses to go on only when too few neighbours are left.
    for reason in refusals:
        assert re.match(r"only \d+ (neighbours advertised keys|neighbours shared)", reason)
    if out.result is None:
        assert out.abandoned and re.match(r"only \d+ meters|cannot recover", out.abandoned)
        event("abandoned")
        return
    event("exact sum")
    assert out.result.verified is True
    silent = set().union(*drop.values()) if drop else set()
    if not refusals:
        assert set(out.result.survivors) >= set(meters) - silent


def test_a_stages_requests_share_one_signature_and_each_proves_its_place() -> None:
    # The server signs the Merkle root of a stage's per-meter requests once; each
    # request carries its audit path. A request moved, altered, given another's
    # path or another batch's signature, or its batch signature reused on a request
    # signed alone, is refused.
    fed, m, client, request = _masked_input_request()
    assert request.batch is not None and request.batch.size == len(fed.clients)
    others = sorted(u for u in fed.clients if u != m)
    # The same server key (same seed) in another federation: a batch of its own.
    twin = federation(10, _config(10))
    assert twin.server_key.public_key() == fed.server_key.public_key()
    out = run_round(twin, 1, inputs_for(twin), until=Stage.MASKED_INPUT)
    other_batch = out.direct[min(out.direct)]
    assert isinstance(other_batch, msg.MaskedInputRequest) and other_batch.batch is not None
    assert other_batch.sig != request.sig
    b = request.batch
    forgeries = {
        "moved": msgspec.structs.replace(b, index=(b.index + 1) % b.size),
        "grown": msgspec.structs.replace(b, size=b.size + 1),
        "path altered": msgspec.structs.replace(b, path=[bytes(32), *b.path[1:]]),
        "another root": msgspec.structs.replace(b, root=other_batch.batch.root),
    }
    for what, batch in forgeries.items():
        forged = msgspec.structs.replace(request, batch=batch)
        with pytest.raises(ProtocolError, match="bad signature on MaskedInputRequest"):
            client.prepare_masked_input(_wire(forged))
        assert client.expecting is Stage.MASKED_INPUT, what
    # Another meter's request in the same batch verifies, but is not this meter's.
    with pytest.raises(ProtocolError, match="addressed to meter"):
        client.prepare_masked_input(_wire(fed.requests[Stage.MASKED_INPUT][others[0]]))
    # The other batch's root and signature, with this request's contents.
    spliced = msgspec.structs.replace(request, sig=other_batch.sig, batch=other_batch.batch)
    with pytest.raises(ProtocolError, match="bad signature on MaskedInputRequest"):
        client.prepare_masked_input(_wire(spliced))
    # The batch signature on the request signed alone (no batch): domains differ.
    alone = msgspec.structs.replace(request, batch=None)
    with pytest.raises(ProtocolError, match="bad signature on MaskedInputRequest"):
        client.prepare_masked_input(_wire(alone))
    client.prepare_masked_input(_wire(request))  # the genuine one still goes through
    assert client.masked_input(_wire(request), inputs_for(fed)[m]).meter == m
