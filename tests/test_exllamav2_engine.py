"""The exllamav2 engine's own logic on CPU: its real owner loop, queueing, cancellation, text and error
handling, driven by tests/exl_standin.py (a stand-in for exllamav2 0.3.2's dynamic generator that
returns the same result dicts). exllamav2 itself is never imported here; tests/gpu/ runs the real one."""
import faulthandler
import threading
import time

import pytest

import exl_standin
from engines import GenParams
from engines.exllamav2_engine import ExLlamaV2Engine, attention_plan, load_error
from helpers import engine_chunks

TIMEOUT_S = 10  # every wait is bounded: a hang fails the test instead of stalling CI
GREEDY = dict(temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)


class Script:
    """The stand-in's "model": the answer (text, then a stop token) for the prompt that contains a key."""

    def __init__(self, tok, answers, end="<|im_end|>"):
        self.tok, self.end = tok, end
        self.answers = {k: self.ids(v) for k, v in answers.items()}

    def ids(self, text):
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return ids + ([self.tok.convert_tokens_to_ids(self.end)] if self.end else [])

    def __call__(self, prompt_ids):
        prompt = self.tok.decode(prompt_ids)
        return next(v for k, v in self.answers.items() if k in prompt)


def make_engine(model_dir, answers, max_seq_len=512, cache_tokens=None, **gen_kw):
    engine = ExLlamaV2Engine(model_dir, "q4", max_seq_len)
    engine.load_tokenizer()
    script = Script(engine.hf_tokenizer, answers)
    gen = exl_standin.Generator(engine.hf_tokenizer, script, max_total_tokens=cache_tokens or max_seq_len, **gen_kw)
    engine.start(gen, exl_standin.Job, exl_standin.Settings, exl_standin.Filter)
    return engine, gen


def user(text):
    return [{"role": "user", "content": text}]


def run(engine, messages, cancel=None, timeout=TIMEOUT_S, **params):
    return engine_chunks(engine, messages, GenParams(**{**GREEDY, **params}), cancel, timeout)


def text_of(chunks):
    return "".join(c.text for c in chunks)


@pytest.fixture(autouse=True)
def watchdog():
    """A step that blocks outside run()'s bounded waits (next(stream)) still cannot stall CI: after 60 s
    the run is ended with every thread's traceback."""
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def model_dir(tiny_qwen_dir):
    return tiny_qwen_dir


ANSWER = "Привет, мир! Hello 🙂 — def f(x): return x"


def test_whole_answer_with_cyrillic_emoji_and_usage(model_dir):
    engine, gen = make_engine(model_dir, {"q1": ANSWER})
    chunks = run(engine, user("q1"), max_tokens=100)
    assert text_of(chunks) == ANSWER
    last = chunks[-1]
    assert last.finish_reason == "stop" and all(not c.finish_reason for c in chunks[:-1])
    assert last.usage["prompt_tokens"] == engine.count_tokens(user("q1"))
    assert last.usage["completion_tokens"] == len(Script(engine.hf_tokenizer, {}).ids(ANSWER))


def test_greedy_sampler_settings_reach_the_job(model_dir):
    engine, gen = make_engine(model_dir, {"q1": "ok"})
    jobs = []
    real_enqueue = gen.enqueue
    gen.enqueue = lambda job: (jobs.append(job), real_enqueue(job))[1]
    run(engine, user("q1"), max_tokens=5, stop=["END"])
    s = jobs[0].gen_settings
    assert (s.top_k, s.token_repetition_penalty) == (1, 1.0)  # greedy: top_k 1, not exllamav2's "top_p 0 = off"
    assert jobs[0].stop_strings == {"END"} and set(engine.stop_ids) <= jobs[0].stop_tokens
    run(engine, user("q1"), max_tokens=5, temperature=0.7, top_k=40, top_p=0.9)
    s = jobs[1].gen_settings
    assert (s.temperature, s.top_k, s.top_p) == (0.7, 40, 0.9)


def test_text_held_back_when_a_stop_token_ends_the_job_is_not_lost(model_dir):
    # "<" may begin the stop string "<stop>": 0.3.2 holds it, then returns it only in r["held"].
    answer = "The result is 3 <"
    engine, _ = make_engine(model_dir, {"q1": answer})
    chunks = run(engine, user("q1"), max_tokens=50, stop=["<stop>"])
    assert text_of(chunks) == answer and chunks[-1].finish_reason == "stop"
    assert "<|im_end|>" not in text_of(chunks)


def test_stop_string_ends_the_answer_before_it(model_dir):
    engine, _ = make_engine(model_dir, {"q1": "first line\nSTOP here and more"})
    chunks = run(engine, user("q1"), max_tokens=50, stop=["STOP"])
    assert text_of(chunks) == "first line\n" and chunks[-1].finish_reason == "stop"


def test_a_special_token_that_is_not_a_stop_token_adds_no_text(model_dir):
    """0.3.2's piece of a special token is '' (get_id_to_piece_list(False)), as the other engines decode
    with skip_special_tokens: <|vision_pad|> inside an answer is counted but never shown. An added token
    that is not special (Qwen2.5's <|fim_pad|>) keeps its text."""
    answer = "left<|vision_pad|>mid<|fim_pad|>right"
    engine, _ = make_engine(model_dir, {"q1": answer})
    ids = Script(engine.hf_tokenizer, {}).ids(answer)
    for token in ("<|vision_pad|>", "<|fim_pad|>"):
        tid = engine.hf_tokenizer.convert_tokens_to_ids(token)
        assert tid not in engine.stop_ids and tid in ids
    chunks = run(engine, user("q1"), max_tokens=50)
    assert text_of(chunks) == "leftmid<|fim_pad|>right" and chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage["completion_tokens"] == len(ids)


def test_length_finish_keeps_a_held_partial_stop_string(model_dir):
    engine, _ = make_engine(model_dir, {"q1": "one two <"})
    n = len(engine.hf_tokenizer("one two <", add_special_tokens=False)["input_ids"])
    chunks = run(engine, user("q1"), max_tokens=n, stop=["<stop>"])
    assert text_of(chunks) == "one two <" and chunks[-1].finish_reason == "length"


def test_requests_in_parallel_get_their_own_answers(model_dir):
    answers = {f"q{i}": f"answer number {i} " * (i + 1) for i in range(4)}
    engine, gen = make_engine(model_dir, answers, paged=True, max_batch_size=4, step_s=0.002)
    got = {}
    threads = [threading.Thread(target=lambda k=k: got.__setitem__(k, text_of(run(engine, user(k), max_tokens=60))))
               for k in answers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    assert got == {k: v for k, v in answers.items()}
    assert gen.num_remaining_jobs() == 0


def test_cancel_while_queued_costs_no_prefill(model_dir):
    long_answer = "word " * 60
    engine, gen = make_engine(model_dir, {"long": long_answer, "short": "never"}, step_s=0.01)
    first = {}
    t = threading.Thread(target=lambda: first.__setitem__("chunks", run(engine, user("long"), max_tokens=400)))
    t.start()
    deadline = time.time() + TIMEOUT_S
    while not gen.active_jobs and time.time() < deadline:
        time.sleep(0.005)
    cancel = threading.Event()
    second = {}
    t2 = threading.Thread(target=lambda: second.__setitem__("chunks", run(engine, user("short"), cancel=cancel)))
    t2.start()
    while not gen.pending_jobs and time.time() < deadline:  # queued behind the first (batch 1)
        time.sleep(0.005)
    assert engine.queue_length() == 1
    cancel.set()
    t2.join(TIMEOUT_S)
    assert second["chunks"][-1].finish_reason == "cancelled" and text_of(second["chunks"]) == ""
    t.join(TIMEOUT_S)
    assert text_of(first["chunks"]) == long_answer
    assert len(gen.prefilled) == 1  # the cancelled request never reached prefill


def test_request_cancelled_before_its_turn_is_never_enqueued(model_dir):
    engine, gen = make_engine(model_dir, {"q1": "hi"})
    cancel = threading.Event()
    cancel.set()
    chunks = run(engine, user("q1"), cancel=cancel)
    assert chunks[-1].finish_reason == "cancelled" and chunks[-1].usage["completion_tokens"] == 0
    assert gen.job_serial == 0


def test_consumer_leaving_frees_the_job_and_the_next_answer_is_right(model_dir):
    engine, gen = make_engine(model_dir, {"long": "word " * 200, "q2": ANSWER}, step_s=0.005)
    stream = engine.generate(user("long"), GenParams(**GREEDY, max_tokens=300), threading.Event())
    assert next(stream).text
    stream.close()  # what the server does when the client hangs up
    deadline = time.time() + TIMEOUT_S
    while gen.num_remaining_jobs() and time.time() < deadline:
        time.sleep(0.01)
    assert gen.num_remaining_jobs() == 0
    assert text_of(run(engine, user("q2"), max_tokens=100)) == ANSWER


def test_prompt_over_the_context_is_a_clean_error(model_dir):
    engine, gen = make_engine(model_dir, {"qq": "x"}, max_seq_len=64)
    with pytest.raises(ValueError, match="context is 64"):
        run(engine, user("qq " * 100))
    assert gen.job_serial == 0
    # A prompt that fits with fewer new tokens than asked: max_tokens shrinks to the room left.
    chunks = run(engine, user("qq"), max_tokens=10_000)
    assert chunks[-1].finish_reason == "stop"


def test_enqueue_assert_fails_only_that_request(model_dir):
    # The cache (256 tokens) is smaller than the context (512): the library's own assert fires.
    engine, _ = make_engine(model_dir, {"big": "x", "small": "fine"}, max_seq_len=512, cache_tokens=256)
    with pytest.raises(AssertionError, match="cannot be enqueued"):
        run(engine, user("big"), max_tokens=400)
    assert text_of(run(engine, user("small"), max_tokens=10)) == "fine"


def test_iterate_error_fails_the_running_job_and_spares_the_queued_one(model_dir):
    engine, gen = make_engine(model_dir, {"alpha": "word " * 40, "beta": "second answer"}, step_s=0.005)
    real_iterate, raised = gen.iterate, []

    def flaky_iterate():  # fails once, while alpha runs and beta waits in the generator's queue
        if not raised and gen.active_jobs and gen.pending_jobs:
            raised.append(1)
            raise RuntimeError("CUDA error: an illegal memory access")
        return real_iterate()
    gen.iterate = flaky_iterate
    out = {}
    ta = threading.Thread(target=lambda: out.__setitem__("alpha", _outcome(engine, "alpha")))
    ta.start()
    while not gen.active_jobs:
        time.sleep(0.001)
    tb = threading.Thread(target=lambda: out.__setitem__("beta", _outcome(engine, "beta")))
    tb.start()
    ta.join(TIMEOUT_S)
    tb.join(TIMEOUT_S)
    assert isinstance(out["alpha"], RuntimeError) and "illegal memory access" in str(out["alpha"])
    assert out["beta"] == "second answer"
    assert engine.owner.is_alive() and text_of(run(engine, user("beta"), max_tokens=20)) == "second answer"


def _outcome(engine, key):
    try:
        return text_of(run(engine, user(key), max_tokens=60))
    except Exception as e:  # noqa: BLE001
        return e


def test_cancel_error_keeps_the_owner_thread_alive(model_dir):
    engine, gen = make_engine(model_dir, {"long": "word " * 100, "q2": "after"}, step_s=0.005)

    def broken_cancel(job):
        raise AssertionError("validate_cache failed")
    gen.cancel = broken_cancel
    stream = engine.generate(user("long"), GenParams(**GREEDY, max_tokens=200), threading.Event())
    next(stream)
    stream.close()  # the job stays in the generator (its cancel failed) and runs to its stop token
    assert text_of(run(engine, user("q2"), max_tokens=20)) == "after"


class ThreadKiller(BaseException):
    """Escapes `except Exception`: the only way left for the owner thread to die."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the point
def test_dead_owner_thread_makes_generate_raise_not_hang(model_dir):
    engine, gen = make_engine(model_dir, {"qq": "x"})

    def fatal():
        raise ThreadKiller()
    gen.iterate = fatal
    t0 = time.time()
    with pytest.raises(RuntimeError, match="generator thread has stopped"):
        run(engine, user("qq"))
    assert time.time() - t0 < 3
    with pytest.raises(RuntimeError, match="restart qwen_server"):
        run(engine, user("qq"), timeout=1)


def test_attention_plan_follows_flash_attn_after_arch_overrides():
    assert attention_plan(True, True, False, 16384, 2048) == (True, False, None)
    assert attention_plan(True, False, False, 16384, 2048) == (False, False, None)
    # arch_compat_overrides() turned flash-attn off (or EXLLAMA_NO_FLASH_ATTN): matmul, SDPA off, small chunks
    paged, no_sdpa, chunk = attention_plan(True, True, True, 16384, 2048)
    assert (paged, no_sdpa) == (False, True) and chunk * 16384 <= 2048 * 4096
    assert attention_plan(False, False, False, 1024, 1024) == (False, True, 1024)


def test_load_errors_become_one_actionable_line():
    oom = load_error(RuntimeError("Insufficient VRAM for model and cache"), "/m", 16384, "fp16")
    assert "do not fit in GPU memory" in str(oom) and "-cache q4" in str(oom)
    no_weights = load_error(ValueError(" ## No .safetensors files found in /m"), "/m", 512, "q4")
    assert "no .safetensors weights" in str(no_weights)
    no_tok = load_error(FileNotFoundError("No supported tokenizer found."), "/m", 512, "q4")
    assert "tokenizer.json" in str(no_tok) and "\n" not in str(no_tok)
