"""Continuous batching (scheduler.py): requests that join and leave a running batch get the same ids, codes and
seeded samples as alone; a cancelled or failing request leaves the others untouched."""

import asyncio
import itertools

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import noise

from speechrs.dia.events import AudioChunk, SpeakOptions, SpeechResult, Step
from speechrs.engine.engine import Engine
from speechrs.linear.base import batch_invariant
from speechrs.request import Request, StepInput
from speechrs.voxtral import pipeline as voxtral_pipeline
from speechrs.voxtral.events import Audio, Done, GenerationOptions, Token


@pytest.fixture
def batched(engine):
    e = Engine(engine.models, max_queue=16, max_batch=4)
    yield e
    e.stop()


async def _consume(engine: Engine, make, wait_for: asyncio.Event | None = None, signal: asyncio.Event | None = None):
    """The events of one request; it is submitted once `wait_for` is set, and sets `signal` after 3 events."""
    if wait_for is not None:
        await wait_for.wait()
    events = []
    async for event in engine.stream(make):
        events.append(event)
        if signal is not None and len(events) == 3:
            signal.set()
    return events


def _run_staggered(engine: Engine, makes: list) -> list[list]:
    """Request 0 starts at once; request i+1 joins once request i has made 3 events (so each joins a running
    batch mid-way); they leave as each finishes."""

    async def main():
        signals = [asyncio.Event() for _ in makes]
        return await asyncio.gather(
            *(_consume(engine, make, signals[i - 1] if i else None, signals[i]) for i, make in enumerate(makes))
        )

    return asyncio.run(main())


def _joined(batched: Engine) -> None:
    """Some steps really ran several requests together."""
    counts = batched.scheduler.batch_sizes.counts
    assert sum(counts[1:]) > 0, f"no step batched more than one request: {counts}"


def test_voxtral_requests_joining_and_leaving_a_batch_match_their_runs_alone(batched, clip):
    vox = batched.get("tiny-voxtral", "voxtral", "test").voxtral
    makes = [
        lambda: vox.transcribe(clip, "en", GenerationOptions(max_tokens=24)),
        lambda: vox.chat([("user", "Say something.")], GenerationOptions(max_tokens=18, temperature=0.9, seed=5)),
        lambda: vox.transcribe((noise(2.0), 16000), None, GenerationOptions(max_tokens=5)),  # leaves early
        lambda: vox.chat(
            [("user", [Audio((noise(1.5, seed=3), 16000)), "What is this?"])],
            GenerationOptions(max_tokens=20, temperature=1.0, top_p=0.9, seed=7),
        ),
    ]
    together = _run_staggered(batched, makes)
    for make, events in zip(makes, together, strict=True):
        alone = list(make())
        assert [e.id for e in events if isinstance(e, Token)] == [e.id for e in alone if isinstance(e, Token)]
        assert isinstance(events[-1], Done) and events[-1].text == alone[-1].text
    _joined(batched)


def _codes(events) -> np.ndarray:
    result = events[-1]
    assert isinstance(result, SpeechResult)
    return result.codes


def test_dia_requests_joining_and_leaving_a_batch_match_their_runs_alone(batched, clip):
    dia = batched.get("tiny-dia", "dia", "test").dia
    makes = [
        lambda: dia.speak("[S1] Hello there. [S2] Hi!", SpeakOptions(max_tokens=60, seed=0)),
        lambda: dia.speak("[S1] A second one, streamed.", SpeakOptions(max_tokens=40, seed=1), stream_audio=True),
        lambda: dia.speak("[S2] Greedy.", SpeakOptions(max_tokens=30, temperature=0)),  # leaves first
        lambda: dia.speak(
            "[S1] In the voice of the clip.",
            SpeakOptions(max_tokens=50, seed=3),
            ref_audio=(sf.read(clip, dtype="float32")[0][:16000], 16000),  # 1 s: the tiny model's room
            ref_text="[S1] The reference words.",
        ),
    ]
    together = _run_staggered(batched, makes)
    for i, (make, events) in enumerate(zip(makes, together, strict=True)):
        alone = list(make())
        assert np.array_equal(_codes(events), _codes(alone)), f"request {i}: codes differ from its run alone"
        assert [e.step for e in events if isinstance(e, Step)] == [e.step for e in alone if isinstance(e, Step)]
        chunks = [e.pcm for e in events if isinstance(e, AudioChunk)]
        if chunks:  # streamed: the same pieces as alone
            alone_chunks = [e.pcm for e in alone if isinstance(e, AudioChunk)]
            assert len(chunks) == len(alone_chunks) > 1
            np.testing.assert_allclose(np.concatenate(chunks), np.concatenate(alone_chunks), atol=1e-5)
    _joined(batched)


def test_max_batch_bounds_the_rows_of_a_step(engine):
    two = Engine(engine.models, max_batch=2)
    try:
        dia = two.get("tiny-dia", "dia", "test").dia
        makes = [lambda s=s: dia.speak("[S1] Hi.", SpeakOptions(max_tokens=30, seed=s)) for s in range(4)]
        asyncio.run(_gather(two, makes))
        counts = two.scheduler.batch_sizes.counts
        assert counts[1] > 0 and sum(counts[2:]) == 0, counts  # steps of 2, none of 3 or more
    finally:
        two.stop()


async def _gather(engine, makes):
    return await asyncio.gather(*(_consume(engine, make) for make in makes))


def test_a_client_that_leaves_frees_its_row_and_the_others_go_on(batched):
    dia = batched.get("tiny-dia", "dia", "test").dia

    def long_one():
        return dia.speak("[S1] A long one.", SpeakOptions(max_tokens=dia.cfg.audio_length, seed=4))

    def other():
        return dia.speak("[S2] The other one.", SpeakOptions(max_tokens=60, seed=9))

    async def main():
        started = asyncio.Event()

        async def leave_early():
            async for event in batched.stream(long_one):
                if isinstance(event, Step) and event.step == 5:
                    started.set()
                    return  # the client goes away: its row must be dropped at the next step

        _, events = await asyncio.gather(leave_early(), _consume(batched, other, started))
        return events

    events = asyncio.run(main())
    assert np.array_equal(_codes(events), _codes(list(other())))
    assert not batched.scheduler.running and batched.queue_depth == 0


def test_a_request_that_fails_late_fails_alone(batched, clip):
    vox = batched.get("tiny-voxtral", "voxtral", "test").voxtral

    def failing():
        request = vox.transcribe(clip, "en", GenerationOptions(max_tokens=24))

        def steps():
            n = 0
            for item in request.steps:
                n += isinstance(item, StepInput)
                if n == 4:
                    raise RuntimeError("found late: this request's audio is bad")
                yield item

        return Request(vox, steps())

    def fine():
        return vox.chat([("user", "Hello?")], GenerationOptions(max_tokens=16, temperature=0.7, seed=2))

    async def main():
        signal = asyncio.Event()

        async def fails():
            with pytest.raises(RuntimeError, match="found late"):
                await _consume(batched, failing, signal=signal)

        return (await asyncio.gather(fails(), _consume(batched, fine, signal)))[1]

    events = asyncio.run(main())
    assert [e.id for e in events if isinstance(e, Token)] == [e.id for e in fine() if isinstance(e, Token)]
    assert not batched.scheduler.running and batched.queue_depth == 0


def test_a_request_past_its_deadline_gets_a_timeout(engine):
    from speechrs.errors import RequestTimeoutError

    timed = Engine(engine.models, request_timeout_s=0.2)
    try:
        dia = timed.get("tiny-dia", "dia", "test").dia

        def slow():
            import time

            request = dia.speak("[S1] Slow.", SpeakOptions(max_tokens=dia.cfg.audio_length, seed=1))

            def steps():
                for item in request.steps:
                    time.sleep(0.01)
                    yield item

            return Request(dia, steps())

        with pytest.raises(RequestTimeoutError, match="--request-timeout"):
            asyncio.run(_consume(timed, slow))
    finally:
        timed.stop()


def test_a_flood_of_requests_gets_only_200s_and_429s_and_the_server_stays_healthy(engine):
    import json
    from concurrent.futures import ThreadPoolExecutor

    from http_server import Server, post, request

    from speechrs.server.app import make_app

    flooded = Engine(engine.models, max_queue=4, max_batch=2)
    s = Server(make_app(flooded))
    try:
        body = {"input": "[S1] Hi.", "response_format": "pcm", "max_tokens": 30}
        with ThreadPoolExecutor(30) as pool:
            answers = list(pool.map(lambda i: post(s, "/v1/audio/speech", {**body, "seed": i}), range(30)))
        statuses = [status for status, _, _ in answers]
        assert sorted(set(statuses)) == [200, 429] and statuses.count(200) >= 2 + 4, statuses
        for status, headers, raw in answers:
            if status == 429:
                assert int(headers["Retry-After"]) >= 1 and json.loads(raw)["error"]["code"] == "server_busy"
        assert request(s, "GET", "/health")[0] == 200
        assert post(s, "/v1/audio/speech", {**body, "seed": 0})[0] == 200
        metrics = request(s, "GET", "/metrics")[2].decode()
        assert 'speechrs_batch_size_bucket{le="2"}' in metrics and "speechrs_queue_wait_seconds_count" in metrics
        assert 'speechrs_waiting_requests{model="tiny-dia"} 0' in metrics
    finally:
        s.close()


class _RowCountDependent(torch.nn.Module):
    """A Linear whose result depends on how many rows it is given, as a kernel that reorders its sums does."""

    in_features = 8

    def forward(self, x):
        return x * (1 + 1e-3 * x.shape[0])


def test_the_probe_finds_a_kernel_that_depends_on_the_row_count():
    assert not batch_invariant([_RowCountDependent()], 2, torch.float32, "cpu")
    lin = torch.nn.Linear(8, 4, bias=False)
    assert batch_invariant([_Invariant(lin)], 1, torch.float32, "cpu")


class _Invariant(torch.nn.Module):
    """Row by row: invariant by construction."""

    def __init__(self, lin):
        super().__init__()
        self.lin, self.in_features = lin, lin.in_features

    def forward(self, x):
        return torch.cat([self.lin(r[None]) for r in x])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_batched_dia_step_gives_each_request_its_bits_alone(dia_dirs, dtype):
    """Three requests at different steps with different texts, in one forward_rows, against each alone; whether
    the model batches its matmuls (the probe) or runs them per request, the bits must be the same."""
    from speechrs.dia.checkpoint import load_dia
    from speechrs.dia.model import DiaRequestRows

    model = load_dia(dia_dirs[1], dtype)
    C, g = model.cfg.channels, torch.Generator().manual_seed(0)
    segments, rows = [], []
    with torch.inference_mode():
        for length, start in ((5, 3), (9, 0), (2, 7)):
            text = torch.randint(1, 200, (1, length), generator=g)
            enc = model.encoder(torch.cat([text, torch.zeros_like(text)]))
            seg = DiaRequestRows(0, model.new_caches(2, 16), model.cross_cache(enc))
            prefix = torch.randint(0, 1024, (1, start + 1, C), generator=g).expand(2, -1, -1)
            model.forward_rows(prefix, [seg])  # fill its cache up to `start`
            seg.start = start + 1
            segments.append(seg)
            rows.append(torch.randint(0, 1024, (1, 1, C), generator=g).expand(2, -1, -1))
        snapshots = [[(c.k.clone(), c.v.clone()) for c in s.caches] for s in segments]
        together = model.forward_rows(torch.cat(rows), segments)
        for i, (seg, snap) in enumerate(zip(segments, snapshots, strict=True)):
            for c, (k, v) in zip(seg.caches, snap, strict=True):
                c.k, c.v = k, v  # the cache as it was before the batched step
            assert torch.equal(model.forward_rows(rows[i], [seg]), together[2 * i : 2 * i + 2]), i


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_batched_voxtral_step_gives_each_request_its_bits_alone(native_dir, dtype):
    from speechrs.layers import RequestRows
    from speechrs.voxtral.checkpoint import load_voxtral

    model = load_voxtral(native_dir, "native", dtype)
    g = torch.Generator().manual_seed(0)
    segments, ids = [], []
    with torch.inference_mode():
        for start in (4, 11, 1):
            seg = RequestRows(0, model.new_caches(1, 32))
            prompt = torch.randint(0, model.cfg.vocab_size, (1, start), generator=g)
            model.forward_rows(model.tok_embeddings(prompt), [seg])
            seg.start = start
            segments.append(seg)
            ids.append(torch.randint(0, model.cfg.vocab_size, (1, 1), generator=g))
        snapshots = [[(c.k.clone(), c.v.clone()) for c in s.caches] for s in segments]
        together = model.forward_rows(model.tok_embeddings(torch.cat(ids)), segments)
        for i, (seg, snap) in enumerate(zip(segments, snapshots, strict=True)):
            for c, (k, v) in zip(seg.caches, snap, strict=True):
                c.k, c.v = k, v
            assert torch.equal(model.forward_rows(model.tok_embeddings(ids[i]), [seg]), together[i : i + 1]), i


def test_a_paused_request_lets_the_running_ones_step_between_its_pieces(engine):
    """request.Pause: a long piece of one request's own work (Voxtral's encoder, per 30 s chunk) gives way to the
    other requests' next step; the log shows the steps between its pieces."""
    import time

    from speechrs.layers import RequestRows
    from speechrs.request import PAUSE

    log: list[str] = []

    class Counter:
        def step(self, inputs):
            time.sleep(0.002)
            log.append(f"step x{len(inputs)}")
            for i in inputs:
                i.logits = torch.zeros(1)

    counter = Counter()

    def stepping():  # runs until the other request is done
        for n in range(5000):
            if "piece 2" in log:
                break
            yield StepInput(torch.zeros(1), RequestRows(n, []))
        yield "stepped"

    def pausing():
        for piece in range(3):
            if piece:
                yield PAUSE
            log.append(f"piece {piece}")
        yield "paused"

    e = Engine(engine.models)
    try:

        async def main():
            async def steps():
                async for event in e.stream(lambda: Request(counter, stepping())):
                    return event

            async def pauses():
                await asyncio.sleep(0.05)
                return await _consume(e, lambda: Request(counter, pausing()))

            return await asyncio.gather(steps(), pauses())

        assert asyncio.run(main()) == ["stepped", ["paused"]]
    finally:
        e.stop()
    pieces = [i for i, line in enumerate(log) if line.startswith("piece")]
    assert len(pieces) == 3 and all(
        any(log[j].startswith("step") for j in range(a, b)) for a, b in itertools.pairwise(pieces)
    ), log


def _by_hand(pipeline, pcm, opts) -> tuple[int, list[int], list[torch.Tensor]]:
    """Drive a transcription as the scheduler does -> (pauses, token ids, each step's logits)."""
    from speechrs.request import Pause

    pauses, ids, logits = 0, [], []
    for item in pipeline.transcribe(pcm, "en", opts).steps:
        if isinstance(item, StepInput):
            pipeline.step([item])
            logits.append(item.logits)
        pauses += isinstance(item, Pause)
        ids += [item.id] if isinstance(item, Token) else []
    return pauses, ids, logits


def test_long_audio_is_encoded_a_chunk_at_a_time_with_the_same_result(native_pipeline):
    pcm, opts = (noise(65.0), 16000), GenerationOptions(max_tokens=4)  # three 30 s chunks
    pauses, ids, _ = _by_hand(native_pipeline, pcm, opts)
    done = [e for e in native_pipeline.transcribe(pcm, "en", opts) if isinstance(e, Done)][0]
    prefill_pieces = -(-done.usage.prompt_tokens // voxtral_pipeline.PREFILL_TOKENS)
    assert pauses == 2 + prefill_pieces - 1  # between the encoder's chunks, then between the prefill's pieces
    assert ids == [e.id for e in native_pipeline.transcribe(pcm, "en", opts) if isinstance(e, Token)]


def test_a_long_prompt_is_prefilled_in_pieces_with_the_same_result(native_pipeline, monkeypatch):
    """A prompt longer than PREFILL_TOKENS is prefilled a piece at a time, pausing between pieces (others step):
    the same greedy ids as one pass, and logits equal to float rounding (fp32 tiny model)."""
    pcm, opts = (noise(20.0), 16000), GenerationOptions(max_tokens=6)  # one chunk: no encoder pause
    monkeypatch.setattr(voxtral_pipeline, "PREFILL_TOKENS", 10**6)
    one_pass, ids, logits = _by_hand(native_pipeline, pcm, opts)
    monkeypatch.setattr(voxtral_pipeline, "PREFILL_TOKENS", 64)
    pieces, piece_ids, piece_logits = _by_hand(native_pipeline, pcm, opts)
    done = [e for e in native_pipeline.transcribe(pcm, "en", opts) if isinstance(e, Done)][0]
    assert one_pass == 0 and pieces == -(-done.usage.prompt_tokens // 64) - 1 >= 4
    assert piece_ids == ids
    for a, b in zip(piece_logits, logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_the_batching_probe_waits_for_its_first_read_or_a_server_s_warm_up(native_dir, dia_dirs, dac):
    """A load does not probe (a CLI request never batches); the first read does, and Engine.warm_up reads it."""
    from speechrs.dia.checkpoint import load_dia
    from speechrs.dia.pipeline import DiaPipeline
    from speechrs.engine.engine import Loaded
    from speechrs.hub import detect
    from speechrs.linear.compute import plan
    from speechrs.voxtral.checkpoint import load_voxtral

    voxtral = load_voxtral(native_dir, "native", torch.float32)
    assert voxtral._batch_invariant is None
    assert voxtral.batch_invariant is True and voxtral._batch_invariant is True  # float32 on the CPU: invariant
    dia = DiaPipeline(load_dia(dia_dirs[0], None), dac)
    assert dia.model._batch_invariant is None
    Engine([Loaded("tiny-dia", detect(dia_dirs[0]), dia, plan("cpu"))], max_batch=2).warm_up()
    assert dia.model._batch_invariant is True
