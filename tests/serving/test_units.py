"""Serving parts without servers: admission control, tile geometry, wire format, request validation,
error mapping, output checks."""

from __future__ import annotations

import asyncio
import base64
import struct
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from servingstack import png_bytes

from hndsr.errors import CheckpointError, ImageTooSmallError, OutputValidationError, ScaleError
from hndsr.resample import resize
from serving.breaker import BreakerProbe, BreakerState, CircuitBreaker
from serving.concurrency import ConcurrencyGate, DrainMeter, Ticket, Verdict
from serving.errors import (
    BadRequest,
    CircuitOpen,
    PayloadTooLarge,
    QueueFull,
    RateLimited,
    ServingError,
    Unauthorized,
    Unprocessable,
    from_exception,
)
from serving.middleware import ClientIdentity, read_api_keys
from serving.rate_limit import RateLimiter
from serving.tile_crops import Canvas, bicubic_tile, choose_tile, crop, model_inputs, plan
from serving.validation import Limits, parse_v1, probe_image


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------------ admission


def bicubic_of(decoded: Any) -> torch.Tensor:
    """The model input the predictor makes of a decoded batch."""
    return model_inputs(decoded.crops, decoded.specs, decoded.canvas)[0]


def test_token_bucket_per_client_with_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.acquire("a")
    with pytest.raises(RateLimited) as info:
        limiter.acquire("a")
    assert info.value.status == 429 and info.value.headers()["Retry-After"] == "1"
    limiter.acquire("b")  # another client has its own bucket
    clock.now += 0.5  # one token back at 2/s
    limiter.acquire("a")
    with pytest.raises(RateLimited):
        limiter.acquire("a")
    RateLimiter(rate=0, burst=1).acquire("x")  # disabled


def test_circuit_breaker_states() -> None:
    clock = FakeClock()
    b = CircuitBreaker(threshold=3, reset_s=30.0, clock=clock)
    for _ in range(2):
        b.allow()
        b.failure("boom")
    b.allow()
    b.success()  # resets the count: failures must be consecutive
    for _ in range(3):
        b.allow()
        b.failure("cuda error")
    assert b.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen) as info:
        b.allow()
    assert info.value.status == 503 and int(info.value.headers()["Retry-After"]) == 30
    assert "cuda error" in info.value.message
    clock.now += 30.0
    assert b.state is BreakerState.HALF_OPEN
    b.allow()  # the one trial
    with pytest.raises(CircuitOpen):
        b.allow()  # no second trial while the first runs
    b.failure("still broken")
    assert b.state is BreakerState.OPEN  # OPEN again on a failed trial
    clock.now += 30.0
    b.allow()
    b.success()
    assert b.state is BreakerState.CLOSED
    b.allow()


def test_breaker_release_does_not_count() -> None:
    b = CircuitBreaker(threshold=1, reset_s=1.0, clock=FakeClock())
    b.allow()
    b.release()
    assert b.state is BreakerState.CLOSED


def test_concurrency_gate_bounds_the_queue() -> None:
    async def scenario() -> tuple[int, int]:
        gate = ConcurrencyGate(limit=1, max_waiting=2)
        release = asyncio.Event()
        refused = 0

        async def hold() -> None:
            nonlocal refused
            try:
                async with gate.slot():
                    await release.wait()
            except QueueFull:
                refused += 1

        tasks = [asyncio.create_task(hold()) for _ in range(5)]
        await asyncio.sleep(0.05)
        waiting = gate.waiting
        release.set()
        await asyncio.gather(*tasks)
        return refused, waiting

    refused, waiting = asyncio.run(scenario())
    assert (refused, waiting) == (2, 2)  # 1 running + 2 waiting, 2 refused


def test_breaker_closes_on_a_ready_probe_not_after_the_blind_window() -> None:
    clock = FakeClock()
    opened: list[int] = []
    b = CircuitBreaker(
        threshold=1, reset_s=30.0, probe_hold_s=1.0, clock=clock, on_open=lambda: opened.append(1)
    )
    b.allow()
    b.failure("connect refused")
    assert b.state is BreakerState.OPEN and opened == [1]
    clock.now += 0.5
    assert b.probe_ready() and b.state is BreakerState.CLOSED  # ready: closed at once, no 30 s wait
    # It said ready and failed again at once: the next probe must wait 2 s, then 4 s, ...
    b.allow()
    b.failure("connect refused")
    assert b.relapses == 1 and b.probe_hold() == 2.0
    clock.now += 1.0
    assert not b.probe_ready() and b.state is BreakerState.OPEN
    clock.now += 1.0
    assert b.probe_ready() and b.state is BreakerState.CLOSED
    clock.now += 31.0  # a success long after the probe closed it: it really recovered
    b.allow()
    b.success()
    assert b.relapses == 0 and b.probe_hold() == 0.0


def test_breaker_probe_closes_within_an_interval_of_readiness() -> None:
    async def scenario() -> tuple[int, float, BreakerState]:
        b = CircuitBreaker(threshold=1, reset_s=600.0)
        ready_at = asyncio.get_running_loop().time() + 0.3
        checks = 0

        async def check() -> bool:
            nonlocal checks
            checks += 1
            if checks == 1:
                raise OSError("a probe that raises says: not ready")
            return asyncio.get_running_loop().time() >= ready_at

        probe = BreakerProbe(b, check, interval_s=0.05)
        b.on_open = probe.kick
        b.allow()
        b.failure("gone")
        assert probe.running
        while b.state is not BreakerState.CLOSED:
            await asyncio.sleep(0.01)
        closed_after = asyncio.get_running_loop().time() - ready_at
        await asyncio.sleep(0.1)
        assert not probe.running  # the probe stops once closed
        return checks, closed_after, b.state

    checks, closed_after, state = asyncio.run(scenario())
    assert state is BreakerState.CLOSED and checks >= 3
    assert 0.0 <= closed_after < 5.0  # one interval (0.05 s) on a quiet machine; generous when loaded


def _run(gate: ConcurrencyGate, clock: FakeClock, size: float, seconds: float) -> None:
    """One request through the gate: ``size`` work units served in ``seconds`` of the fake clock."""

    async def go() -> None:
        async with gate.slot() as ticket:
            ticket.plan(size, "det")
            clock.now += seconds
            ticket.progress(1.0)
            ticket.ok = True

    asyncio.run(go())


def test_drain_meter_learns_unloaded_cost_and_rate() -> None:
    clock = FakeClock()
    meter = DrainMeter(window_s=1.0)
    gate = ConcurrencyGate(4, 20, meter=meter, max_latency_factor=2.5, clock=clock)
    for _ in range(3):
        _run(gate, clock, size=1.0, seconds=0.5)  # alone: 0.5 s per unit
    assert meter.cost("det") == pytest.approx(0.5)
    assert meter.mean_work == pytest.approx(0.5)
    assert meter.rate == pytest.approx(1.0)  # 1.5 unloaded seconds drained in 1.5 busy seconds
    assert meter.cost("unseen") == pytest.approx(0.5)  # another class: the overall estimate


def test_admission_by_expected_wait_with_retry_after_from_the_drain_rate() -> None:
    async def scenario() -> tuple[list[Ticket], list[float], float]:
        clock = FakeClock()
        meter = DrainMeter()
        meter.rate, meter.mean_work = 0.5, 2.0  # measured: 2 s requests, drained at half speed
        gate = ConcurrencyGate(2, 20, meter=meter, max_latency_factor=2.5, clock=clock)
        release = asyncio.Event()
        tickets: list[Ticket] = []
        refused: list[float] = []

        async def hold() -> None:
            try:
                async with gate.slot() as ticket:
                    tickets.append(ticket)
                    await release.wait()
            except QueueFull as exc:
                assert exc.retry_after is not None
                refused.append(exc.retry_after)

        tasks = []
        for _ in range(4):
            tasks.append(asyncio.create_task(hold()))
            await asyncio.sleep(0.01)
        # 1st: nothing ahead -> admitted. 2nd: (2 + 2) / 0.5 = 8 s expected > 2.5 x 2 s -> refused.
        assert len(tickets) == 1 and len(refused) == 3
        # Retry-After: drain the excess (2 + 2 - 5 x 0.5) / 0.5 = 3 s; each client refused before gets
        # one more request's drain time (2 / 0.5 = 4 s), so they do not all come back at once.
        assert refused == pytest.approx([3.0, 7.0, 11.0])
        meter.rate = 4.0  # a faster drain: 4 s expected <= 5 s -> admitted
        tasks.append(asyncio.create_task(hold()))
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(*tasks)
        return tickets, refused, meter.rate

    tickets, refused, _ = asyncio.run(scenario())
    assert len(tickets) == 2 and len(refused) == 3


def test_calibration_is_a_high_quantile_of_realized_over_predicted_latency() -> None:
    meter = DrainMeter(calibration_n=20, calibration_q=0.9)
    meter.record(Ticket(admitted=0.0, started=0.0, size=1.0, cls="det", ok=True), now=2.0)  # 2 s/unit
    assert meter.cost("det") == pytest.approx(2.0)

    def finished(latency: float) -> None:  # admitted with 2 s of work ahead at rate 1: predicted 4 s
        ticket = Ticket(admitted=10.0, size=1.0, cls="det", ok=True, ahead=2.0, rate=1.0)
        meter.calibrate(ticket, now=10.0 + latency)

    for _ in range(4):
        finished(8.0)
    assert meter.calibration() == 1.0  # fewer than 5: not believed yet
    for latency in [4.0] * 14 + [8.0] * 2:
        finished(latency)
    # 20 ratios: 14 of 1.0, then 6 of 2.0 (the 4 early ones included): the 90th percentile is 2.0.
    assert meter.calibration() == pytest.approx(2.0)
    for _ in range(20):  # the window moves on
        finished(4.0)
    assert meter.calibration() == pytest.approx(1.0)
    meter.calibrate(Ticket(admitted=0.0, size=1.0, cls="det", ok=True), now=50.0)  # no prediction made
    meter.calibrate(Ticket(admitted=0.0, size=1.0, cls="det", ahead=0.0, rate=1.0), now=50.0)  # failed
    assert meter.calibration() == pytest.approx(1.0)


def test_admission_rule_retry_after_and_fair_turns() -> None:
    """expected = calibration x (in system + turns ahead x typical + typical) / rate <= factor x typical;
    Retry-After = (expected - budget) / calibration; refused clients keep their turns."""

    async def scenario() -> None:
        clock = FakeClock()
        meter = DrainMeter()
        meter.record(Ticket(admitted=0.0, started=0.0, size=1.0, cls="det", ok=True), now=2.0)
        meter.rate = 0.5  # typical 2 s, drained at half speed
        for _ in range(5):  # admitted requests took 1.5x what was predicted
            meter.calibrate(Ticket(admitted=0.0, size=1.0, cls="det", ok=True, ahead=0.0, rate=0.5), 6.0)
        assert (meter.mean_work, meter.calibration()) == (pytest.approx(2.0), pytest.approx(1.5))
        gate = ConcurrencyGate(4, 20, meter=meter, max_latency_factor=2.5, clock=clock)
        release = asyncio.Event()

        async def ask(client: str) -> Verdict | Ticket:
            """The verdict of a refusal, or the ticket of an admitted request (held until released)."""
            admitted: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()

            async def hold() -> None:
                try:
                    async with gate.slot(client) as ticket:
                        admitted.set_result(ticket)
                        await release.wait()
                except QueueFull as exc:
                    assert exc.admission is not None and exc.retry_after is not None
                    assert exc.body()["admission"] == exc.admission
                    admitted.set_exception(exc)

            held.append(asyncio.create_task(hold()))
            try:
                return await admitted
            except QueueFull as exc:
                assert exc.admission is not None
                return Verdict(False, retry_after_s=exc.retry_after, **_figures(exc.admission))

        held: list[asyncio.Task[None]] = []
        a = await ask("a")  # nothing admitted: in, whatever the estimate
        assert isinstance(a, Ticket) and a.ahead == 0.0 and a.rate == 0.5
        b = await ask("b")  # 1.5 x (2 + 2) / 0.5 = 12 s > 5 s: refused, back in (12 - 5) / 1.5 s
        assert isinstance(b, Verdict) and not b.admit
        assert (b.expected_s, b.budget_s, b.turns_ahead) == (pytest.approx(12.0), pytest.approx(5.0), 0)
        assert b.retry_after_s == pytest.approx(7.0 / 1.5) and b.wait_s == pytest.approx(7.0 / 1.5, abs=1e-5)
        c = await ask("c")  # b's turn is ahead of it: one typical request more
        assert isinstance(c, Verdict) and c.turns_ahead == 1
        assert c.retry_after_s == pytest.approx((18.0 - 5.0) / 1.5)
        clock.now += 1.0
        b_early = await ask("b")  # back too early: the rest of the same wait, not a later turn
        assert isinstance(b_early, Verdict) and b_early.turn_kept and b_early.turns_ahead == 0
        assert b_early.retry_after_s == pytest.approx(7.0 / 1.5 - 1.0)
        d = await ask("d")  # a newcomer (or a client straight back after its answer) queues behind
        assert isinstance(d, Verdict) and d.turns_ahead == 2
        assert d.retry_after_s == pytest.approx((24.0 - 5.0) / 1.5)

        clock.now = 109.0  # past b's and c's turns; a still running
        meter.rate = 2.0  # a faster drain: 1.5 x (2 + 2) / 2 = 3 s fits the 5 s budget
        newcomer = await ask("e")  # but b, c and d are due back before it: 1.5 x (2 + 6 + 2) / 2
        assert isinstance(newcomer, Verdict) and newcomer.turns_ahead == 3
        assert newcomer.expected_s == pytest.approx(7.5)
        b_back = await ask("b")  # on its turn: only the turns before its own count
        assert isinstance(b_back, Ticket) and b_back.ahead == pytest.approx(2.0)
        assert gate.snapshot()["turns_pending"] == 3  # b's used; c, d and e's still pending
        clock.now += 100.0  # turns not claimed within the grace time lapse
        gate.verdict("z")
        assert gate.snapshot()["turns_pending"] == 0
        release.set()
        await asyncio.gather(*held)
        assert gate.refused == 5 and gate.active == 0

    asyncio.run(scenario())


def _figures(admission: dict[str, object]) -> dict[str, object]:
    """A refusal's ``admission`` body back into Verdict fields."""
    a = admission
    return {
        "expected_s": a["expected_s"],
        "budget_s": a["budget_s"],
        "unloaded_s": a["unloaded_s"],
        "in_system": a["in_system_s"],
        "turns_ahead": a["turns_ahead"],
        "rate": a["drain_rate"],
        "calibration": a["calibration"],
        "wait_s": a["wait_s"],
        "turn_kept": a["turn_kept"],
    }


def test_admission_without_measurements_is_by_queue_length_only() -> None:
    gate = ConcurrencyGate(1, 5, meter=DrainMeter(), max_latency_factor=2.5)
    assert gate.verdict().admit  # nothing measured, nothing running


def test_rate_limit_identity_is_what_the_server_can_vouch_for(tmp_path: Path) -> None:
    def scope(peer: str, **headers: str) -> dict[str, object]:
        raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
        return {"client": (peer, 5000), "headers": raw}

    anonymous = ClientIdentity.create()
    # A self-asserted key names no bucket: rotating keys from one address is one client.
    assert anonymous(scope("10.0.0.7", x_api_key="a")) == anonymous(scope("10.0.0.7", x_api_key="b"))
    assert anonymous(scope("10.0.0.7", x_forwarded_for="1.2.3.4")) == "ip:10.0.0.7"

    keys = tmp_path / "keys.txt"
    keys.write_text("# issued keys\nk-team-a-0123456789abcdef team-a\nk-team-b-0123456789abcdef team-b\n")
    issued = ClientIdentity.create(read_api_keys(str(keys)))
    assert issued(scope("10.0.0.7", x_api_key="k-team-a-0123456789abcdef")) == "client:team-a"
    assert issued(scope("10.0.0.8", x_api_key="k-team-a-0123456789abcdef")) == "client:team-a"
    assert issued(scope("10.0.0.7")) == "ip:10.0.0.7"
    with pytest.raises(Unauthorized) as info:
        issued(scope("10.0.0.7", x_api_key="made-up"))
    assert info.value.status == 401

    proxied = ClientIdentity.create(ip_header="X-Forwarded-For", trusted_proxies="127.0.0.1/32")
    assert proxied(scope("127.0.0.1", x_forwarded_for="spoofed, 203.0.113.9")) == "ip:203.0.113.9"
    chained = ClientIdentity.create(ip_header="X-Forwarded-For", trusted_proxies="127.0.0.1/32,10.0.0.0/8")
    assert chained(scope("127.0.0.1", x_forwarded_for="6.6.6.6, 203.0.113.9, 10.1.2.3")) == "ip:203.0.113.9"
    assert (
        proxied(scope("198.51.100.1", x_forwarded_for="203.0.113.9")) == "ip:198.51.100.1"
    )  # untrusted peer

    (tmp_path / "short.txt").write_text("abc team\n")
    with pytest.raises(ValueError, match="16 characters"):
        read_api_keys(str(tmp_path / "short.txt"))
    (tmp_path / "keys.json").write_text('{"k-json-0123456789abcdef": "team-j"}')
    assert read_api_keys(str(tmp_path / "keys.json")) == {"k-json-0123456789abcdef": "team-j"}


# ------------------------------------------------------------------------------------ tiles


@pytest.mark.parametrize(("h", "w", "scale"), [(64, 80, 4.0), (50, 37, 2.5), (160, 120, 4.0), (90, 70, 3.0)])
def test_tile_bicubic_from_lr_crop_equals_the_whole_image_bicubic(h: int, w: int, scale: float) -> None:
    lr = torch.rand(3, h, w)
    canvas = Canvas.for_scale(h, w, scale, 4)
    tile = choose_tile(canvas.canvas_h, canvas.canvas_w, max_tile=256, overlap=32, halo=32, align=4)
    whole = resize(lr, (canvas.out_h, canvas.out_w))
    for spec in plan(canvas, tile=tile, overlap=32, halo=32, align=4):
        t = spec.tile
        got = bicubic_tile(crop(lr, spec), spec, canvas)
        ys = torch.arange(t.y0, t.y1).clamp(max=canvas.out_h - 1)
        xs = torch.arange(t.x0, t.x1).clamp(max=canvas.out_w - 1)
        assert torch.allclose(got, whole[:, ys][:, :, xs], atol=1e-6)
        assert spec.rows * spec.cols * scale**2 < 2 * t.height * t.width  # the crop is the compact part


def test_choose_tile_wastes_fewer_pixels() -> None:
    assert choose_tile(1024, 1024, max_tile=512, overlap=32, halo=32, align=4) == 408  # 3 x 408 < 3 x 512
    assert choose_tile(2048, 2048, max_tile=512, overlap=32, halo=32, align=4) == 488
    assert choose_tile(512, 512, max_tile=512, overlap=32, halo=32, align=4) == 512
    assert choose_tile(100, 100, max_tile=512, overlap=32, halo=32, align=4) == 512  # one tile
    assert choose_tile(2048, 2048, max_tile=1024, overlap=32, halo=32, align=4) == 748  # 1.2x, not 2.25x


# ------------------------------------------------------------------------------------ validation


def test_v1_parsing_errors_say_what_to_change() -> None:
    limits = Limits()
    good = base64.b64encode(png_bytes(16, 16)).decode()
    cases: list[tuple[object, type[ServingError], str]] = [
        ([1, 2], BadRequest, "JSON object"),
        ({"instances": []}, BadRequest, "non-empty"),
        ({"instances": [{"scale": 4}]}, BadRequest, "image_b64"),
        ({"instances": [{"image_b64": good, "scale": "4"}]}, BadRequest, "must be a number"),
        ({"instances": [{"image_b64": good, "scale": 8}]}, Unprocessable, "between 2 and 4"),
        ({"instances": [{"image_b64": good, "steps": 51}]}, Unprocessable, "steps"),
        ({"instances": [{"image_b64": good, "seed": -1}]}, Unprocessable, "seed"),
        ({"instances": [{"image_b64": good, "output_format": "bmp"}]}, Unprocessable, "png, geotiff"),
        ({"instances": [{"image_b64": "%%%"}]}, BadRequest, "base64"),
        ({"instances": [{"image_b64": good, "colour": 1}]}, BadRequest, "unknown keys"),
        ({"instances": [{"image_b64": good, "cog": "false"}]}, BadRequest, "'cog' must be true or false"),
        ({"instances": [{"image_b64": good}] * 5}, PayloadTooLarge, "split"),
    ]
    for payload, error, message in cases:
        with pytest.raises(error, match=message):
            parse_v1(payload, limits)
    [inp] = parse_v1({"instances": [{"image_b64": good, "scale": 2.5, "steps": 3}]}, limits)
    assert inp.params.scale == 2.5 and inp.params.steps == 3 and inp.params.output_format == "png"


def test_probe_refuses_bombs_from_the_header_alone() -> None:
    limits = Limits(max_input_pixels=1000 * 1000)
    head = png_bytes(16, 16)
    bomb = head[:16] + struct.pack(">II", 50_000, 50_000) + head[24:33]  # header only, no pixels
    with pytest.raises(PayloadTooLarge, match="synchronous limit"):
        probe_image(bomb, "x", limits)
    with pytest.raises(Unprocessable, match="at least 8 px"):
        probe_image(png_bytes(4, 40), "x", limits)
    with pytest.raises(Unprocessable, match="not a PNG, JPEG or TIFF"):
        probe_image(b"GIF89a....", "x", limits)
    header = probe_image(head, "x", limits)
    assert (header.kind, header.width, header.height, header.bands) == ("png", 16, 16, 3)


def test_error_mapping_is_one_table() -> None:
    assert from_exception(ScaleError("s")).status == 422
    assert from_exception(ImageTooSmallError("s")).status == 422
    assert from_exception(OutputValidationError("nan")).status == 500
    not_ready = from_exception(CheckpointError("bad hash"))
    assert not_ready.status == 503 and "Retry-After" in not_ready.headers()
    assert from_exception(RuntimeError("bug")).status == 500
    body = orjson.loads(orjson.dumps(BadRequest("fix it").body()))
    assert body == {"error": "fix it", "kind": "bad_request", "status": 400}


# ------------------------------------------------------------------------------------ output checks


def test_output_checks_refuse_nan_range_and_degenerate() -> None:
    pytest.importorskip("kserve")
    from serving.output_checks import check_output

    up = torch.rand(2, 3, 32, 32)
    assert torch.equal(check_output(up.clone(), up), up)
    with pytest.raises(OutputValidationError, match="non-finite"):
        check_output(torch.full_like(up, float("nan")), up)
    with pytest.raises(OutputValidationError, match="outside"):
        check_output(up * 10, up)
    grey = up.clone()
    grey[1] = 0.5  # the second tile came back flat
    with pytest.raises(OutputValidationError, match="degenerate output: tile 1"):
        check_output(grey, up)
    flat = torch.full_like(up, 0.3)
    assert torch.equal(check_output(flat, flat), flat)  # a flat input may give a flat output


def test_wire_format_round_trip() -> None:
    pytest.importorskip("kserve")
    from kserve import InferRequest
    from kserve.protocol.rest.v2_datamodels import InferenceRequest

    from serving.batch_decode import BatchLimits, decode_v1_request, decode_v2_request
    from serving.batch_encode import TileBatch, encode_v1, encode_v2
    from serving.codec import RenderParams

    lr = torch.rand(3, 60, 70)
    canvas = Canvas.for_scale(60, 70, 4.0, 4)
    specs = plan(canvas, tile=128, overlap=32, halo=32, align=4)[:3]
    batch = TileBatch(canvas, specs, [crop(lr, s).numpy() for s in specs], RenderParams(scale=4.0, seed=3))
    expected = torch.stack([bicubic_tile(crop(lr, s), s, canvas) for s in specs])
    for encoding in ("b64", "fp32_json"):
        body, _ = encode_v2(batch, encoding)
        request = InferRequest.from_inference_request(InferenceRequest.model_validate_json(body), "hndsr")
        decoded = decode_v2_request(request, BatchLimits())
        assert torch.allclose(bicubic_of(decoded), expected, atol=1e-6), encoding
        assert decoded.params == RenderParams(scale=4.0, seed=3) and decoded.binary_output == (
            encoding == "b64"
        )
    body, _ = encode_v1(batch)
    decoded = decode_v1_request(orjson.loads(body), BatchLimits())
    assert torch.allclose(bicubic_of(decoded), expected, atol=1e-6)
    bad = orjson.loads(body)
    bad["instances"][0]["geometry"][4] = 59  # the crop no longer covers the tile
    with pytest.raises(BadRequest):
        decode_v1_request(bad, BatchLimits())
    # 8-bit sources: the crops travel as uint8 and decode to the very same float32 values.
    lr8 = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 60, 70), dtype=np.uint8))
    lr8f = lr8.numpy().astype(np.float32)
    lr8f /= np.float32(255)  # what the image reader makes of 8-bit pixels
    crops8 = [crop(torch.from_numpy(lr8f), s).numpy() for s in specs]
    as_float = TileBatch(canvas, specs, crops8, RenderParams(scale=4.0))
    as_uint8 = TileBatch(canvas, specs, crops8, RenderParams(scale=4.0), lr_dtype="uint8")
    assert len(encode_v1(as_uint8)[0]) < len(encode_v1(as_float)[0]) / 3
    want8 = decode_v1_request(orjson.loads(encode_v1(as_float)[0]), BatchLimits()).crops
    got8 = decode_v1_request(orjson.loads(encode_v1(as_uint8)[0]), BatchLimits()).crops
    assert all(torch.equal(a, b) for a, b in zip(got8, want8, strict=True))
    body, _ = encode_v2(as_uint8, "b64")
    request = InferRequest.from_inference_request(InferenceRequest.model_validate_json(body), "hndsr")
    assert all(
        torch.equal(a, b) for a, b in zip(decode_v2_request(request, BatchLimits()).crops, want8, strict=True)
    )
    wrong = orjson.loads(encode_v1(as_uint8)[0])
    wrong["parameters"]["lr_dtype"] = "float16"
    with pytest.raises(BadRequest, match="lr_dtype"):
        decode_v1_request(wrong, BatchLimits())
    wrong["parameters"]["lr_dtype"] = "float32"  # uint8 bytes declared as float32: the size disagrees
    with pytest.raises(BadRequest, match="needs"):
        decode_v1_request(wrong, BatchLimits())
    lr_nan = lr.clone()
    lr_nan[1, 30, 30] = float("nan")
    poisoned = TileBatch(canvas, specs, [crop(lr_nan, s).numpy() for s in specs], RenderParams(scale=4.0))
    for encoding in ("b64", "fp32_json"):
        body, _ = encode_v2(poisoned, encoding)
        request = InferRequest.from_inference_request(InferenceRequest.model_validate_json(body), "hndsr")
        with pytest.raises(Unprocessable, match="non-finite"):  # the client's values: 422, not the model's
            decode_v2_request(request, BatchLimits())
    with pytest.raises(Unprocessable, match="non-finite"):
        decode_v1_request(orjson.loads(encode_v1(poisoned)[0]), BatchLimits())
    scaled = TileBatch(canvas, specs, [crop(lr * 255.0, s).numpy() for s in specs], RenderParams(scale=4.0))
    with pytest.raises(Unprocessable, match=r"outside \[0, 1\]") as info:  # 8-bit values stored as float
        decode_v1_request(orjson.loads(encode_v1(scaled)[0]), BatchLimits())
    assert info.value.status == 422 and info.value.kind == "invalid_values"
    np.testing.assert_array_equal(bicubic_of(decoded).numpy(), expected.numpy())


def test_compute_executor_runs_everything_on_one_thread_and_propagates_errors() -> None:
    import asyncio
    import threading

    from serving.compute import ComputeExecutor

    compute = ComputeExecutor()

    async def scenario() -> set[int]:
        idents = await asyncio.gather(*(compute.run(threading.get_ident) for _ in range(8)))
        with pytest.raises(ZeroDivisionError):
            await compute.run(lambda: 1 / 0)
        return set(idents)

    try:
        idents = asyncio.run(scenario())
        assert len(idents) == 1 and threading.get_ident() not in idents
        assert compute.call(threading.get_ident) in idents  # the synchronous path uses the same thread
    finally:
        compute.shutdown()


def test_protocol_checks_of_bodies_and_headers() -> None:
    import orjson

    from serving.request_bodies import (
        MAX_JSON_DEPTH,
        binary_request,
        header_length,
        json_depth,
        normalise,
        parse_json,
    )

    assert json_depth({"a": [1, {"b": []}]}) == 4 and json_depth(7) == 0
    with pytest.raises(BadRequest, match="deeper"):
        parse_json(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse_json(b'{"a": NaN}')
    for bad in (b"abc", b"1e3", b"-5", b"", b"0x10", b"99999999999999999"):
        with pytest.raises(BadRequest, match="Inference-Header-Content-Length") as info:
            header_length(bad, 100)
        assert info.value.kind == "invalid_header"
    assert header_length(b" 12 ", 100) == 12
    # A BYTES input travels as JSON strings: base64 text as it is, the file itself base64-encoded.
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 20
    tensor = b"".join(len(e).to_bytes(4, "little") + e for e in (png, b"QUJD"))
    head = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": len(tensor)},
            }
        ]
    }
    h = orjson.dumps(head)
    body, length = binary_request(h + tensor, len(h))
    assert length is None and orjson.loads(body)["inputs"][0]["data"] == [
        base64.b64encode(png).decode(),
        "QUJD",
    ]
    fp32 = {
        "inputs": [
            {"name": "lr", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}}
        ]
    }
    h = orjson.dumps(fp32)
    assert binary_request(h + b"\x00" * 16, len(h)) == (h + b"\x00" * 16, len(h))
    for tail in (b"\x00" * 15, b"\x00" * 17):
        with pytest.raises(BadRequest):
            binary_request(h + tail, len(h))
    scope = {
        "type": "http",
        "path": "/v1/models/m:predict",
        "headers": [(b"Content-Type", b"Application/JSON; charset=utf-8")],
    }
    fixed, _ = normalise(scope, b"{}")
    assert (b"content-type", b"application/json") in fixed["headers"]
    with pytest.raises(BadRequest, match="v2"):
        normalise(scope | {"headers": [(b"inference-header-content-length", b"2")]}, b"{}")
