"""A CPU stand-in for exllamav2 0.3.2's dynamic generator (exllamav2/generator/dynamic.py), so the
engine's own owner loop, queueing, cancellation and text handling run in CI without a GPU and
without importing exllamav2. It fakes the third-party library only: no model, each job "samples"
the token ids that `answer(prompt_ids)` returns, one per iterate() per job.

What it copies from 0.3.2, by the lines of dynamic.py it follows:
  - Job.__init__: 1691-1760 (asserts on input_ids, stop_conditions split into tokens/strings, ValueError)
  - Generator.enqueue / prepare_for_queue: 832-853, 2244-2291 (the "Job requires N pages" assert);
    pages = whole prompt + max_new_tokens, no prefix sharing between jobs (2255-2283 simplified)
  - Generator.cancel / num_remaining_jobs: 816-818, 856-872
  - Generator.iterate: 915-1006 (start jobs, one prefill chunk per job, then one sample per job)
  - iterate_start_jobs: 1296-1347 ("started" results, max_batch_size, free pages, max_skips)
  - Job.prefill: 2330-2520 (a "prefill" result per chunk of max_chunk_size tokens)
  - Job.receive_sample: 1905-1960 and 2102-2240 (held_text, the stop-token check BEFORE the held text is
    emitted, max_new_tokens, the "\ufffd" hold, stop-string partial match), emit(): 2005-2097
    (the "text" / "held" / eos keys and their order)
  - partial_strings_match: exllamav2_ext/cpp/generator.cpp 12-51, ported line by line
  - filters and return_logits, with a `logits(ids)` "model" instead of a scripted answer: Job.__init__
    1745-1747, 1801-1802; Job.receive_logits 1867-1872 (filters begin("") before the first token);
    sampler.py 438-492 (the logit-mask path when every filter can_mask_logits, else the intersection of
    the allowed sets from get_next()); receive_sample 1918-1935 (feed(token) as a (1, 1) tensor, then
    the mask queued on the filter pool) and 2102-2116 (held logits); iterate 1211-1220 (the queued filter
    work starts while the "GPU" runs); emit 2050-2052 and 2088-2090 ("logits" beside "token_ids").
    Greedy is top_k == 1 (the engine's setting); otherwise a seeded draw at the job's temperature.
Pieces: 0.3.2 appends each token's piece, get_id_to_piece_list(False) (tokenizer.py 662-698), which
tokenizer/hf.py enumerate_tokens() fills with tokenizers' decode([id]): special tokens such as <|im_end|>
are '' and bytes of an unfinished UTF-8 character read as "\ufffd". eos_triggering_token_str comes from
get_id_to_piece_list(True) (emit 2025-2029): a special token's own text there.
Padding rows: sampler.py 514-517 sets the logits of ids >= tokenizer.get_vocab_size() to -inf before
sampling, in place: on the job's kept logits when no filter's mask_logits made a new tensor."""
import time
from concurrent.futures import ThreadPoolExecutor

import torch


class Settings:
    """ExLlamaV2Sampler.Settings: only the fields the engine sets (defaults from sampler.py)."""

    def __init__(self):
        self.temperature, self.top_k, self.top_p, self.token_repetition_penalty = 0.8, 50, 0.8, 1.025


class Filter:
    """ExLlamaV2Filter (generator/filters/base.py): the state and the background calls the generator uses."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self.sequence_str, self.background_result = model, tokenizer, "", None

    def background_next(self, pool):
        assert self.background_result is None
        self.background_result = pool.submit(self.next)

    def background_prepare_logit_mask(self, pool):
        assert self.background_result is None
        self.background_result = pool.submit(self.prepare_logit_mask)

    def background_drop(self):
        if self.background_result is not None:
            self.background_result.result()
            self.background_result = None

    def get_next(self, mask=False):
        if self.background_result is None:
            return self.prepare_logit_mask() if mask else self.next()
        r = self.background_result.result()
        self.background_result = None
        return r


class Job:
    def __init__(self, input_ids, max_new_tokens, gen_settings=None, seed=None, stop_conditions=None,
                 identifier=None, filters=None, filter_prefer_eos=False, return_logits=False, **kwargs):
        assert input_ids.device.type == "cpu", "input_ids must reside in system memory"
        assert input_ids.shape[-1] > 0, "Input IDs cannot be empty."
        assert input_ids.shape[0] == 1, "input_ids must be [1, seq_len] tensor or list of [1, seq_len] tensors"
        self.ids = input_ids[0].tolist()
        self.max_new_tokens, self.gen_settings, self.seed, self.identifier = max_new_tokens, gen_settings, seed, identifier
        self.stop_tokens, self.stop_strings = set(), set()
        for t in stop_conditions or ():
            if isinstance(t, int):
                self.stop_tokens.add(t)
            elif isinstance(t, str):
                self.stop_strings.add(t)
            else:
                raise ValueError("Unsupported type in stop_conditions")
        self.stop_strings_list = list(self.stop_strings)  # _strings_to_utf32(list(self.stop_strings)) order
        self.new_tokens, self.kv_position, self.pages, self.skips = 0, 0, 0, 0
        self.held_text, self.held_tokens, self.full_completion = "", [], ""
        self.serial_number = None
        self.filters, self.return_logits, self.held_logits = list(filters or []), return_logits, []
        self.rng = torch.Generator().manual_seed(seed if seed is not None else 0)


def partial_strings_match(q: str, strings) -> int:
    """-1 no match, -2 a string overlaps the end of q, >= 0 index in q of a full match (first string wins)."""
    for s in strings:
        a = 0
        while a < len(q):
            a0, b = a, 0
            while True:
                eq = q[a] == s[b]
                a, b = a + 1, b + 1
                if not eq:
                    break
                if b == len(s):
                    return a0
                if a == len(q):
                    return -2
            a = a0 + 1
    return -1


class Generator:
    """ExLlamaV2DynamicGenerator's queue, paging arithmetic and result dicts."""

    def __init__(self, tokenizer, answer, max_total_tokens=2048, paged=False, max_batch_size=1,
                 max_chunk_size=2048, max_skips=4, step_s=0.0, logits=None):
        """answer(prompt_ids) -> the token ids to "sample", or, with answer None, logits(ids) -> the
        model's logits (a 1-d float tensor) for the next token after ids, sampled as 0.3.2 does."""
        self.tokenizer, self.answer, self.logits = tokenizer, answer, logits
        self.vocab_size = len(tokenizer)  # ExLlamaV2Tokenizer.get_vocab_size(): the added tokens included
        self.filter_pool, self.filter_queue = ThreadPoolExecutor(max_workers=2), []
        self.paged, self.max_batch_size, self.max_chunk_size = paged, max_batch_size, max_chunk_size
        self.page_size = 256 if paged else max_total_tokens  # 387
        self.max_pages = max(max_total_tokens // self.page_size, 1)  # 393
        self.max_total_tokens, self.max_skips, self.step_s = max_total_tokens, max_skips, step_s
        self.pending_jobs, self.active_jobs = [], []
        self.job_serial = 0
        self.prefilled = []  # identifiers of jobs that began prefill (for tests: a cancelled waiter never does)
        self.iterations = 0

    def piece(self, token_id, include_special_tokens=False):
        """tokenizer.get_id_to_piece_list(include_special_tokens)[token_id]"""
        return self.tokenizer.decode([token_id], skip_special_tokens=not include_special_tokens)

    def num_remaining_jobs(self):
        return len(self.pending_jobs) + len(self.active_jobs)

    def enqueue(self, job):
        total_pages = -(-(len(job.ids) + job.max_new_tokens) // self.page_size)
        assert total_pages <= self.max_pages, \
            f"Job requires {total_pages} pages (only {self.max_pages} available) and cannot " + \
            f"be enqueued. Total cache allocated is {self.max_pages} * {self.page_size} = " + \
            f"{self.max_total_tokens} tokens"
        job.pages, job.serial_number = total_pages, self.job_serial
        job.tokens = list(self.answer(job.ids)) if self.answer else None
        job.sampled = []
        self.job_serial += 1
        self.pending_jobs.append(job)
        job.time_enqueue = time.time()
        return job.serial_number

    def cancel(self, job):
        if job in self.pending_jobs:
            self.pending_jobs.remove(job)
        elif job in self.active_jobs:
            self.active_jobs.remove(job)  # deallocate_pages()

    def iterate(self):
        self.iterations += 1
        if self.step_s:
            time.sleep(self.step_s)  # a GPU forward pass takes time; lets tests race against it
        results = []
        self._start_jobs(results)
        for job in list(self.active_jobs):
            self._prefill(job, results)
        for f, mask in self.filter_queue:
            f.background_prepare_logit_mask(self.filter_pool) if mask else f.background_next(self.filter_pool)
        self.filter_queue.clear()
        for job in list(self.active_jobs):
            if job.kv_position >= len(job.ids) - 1:
                token, logits = (job.tokens[job.new_tokens], None) if job.tokens is not None else self._draw(job)
                if self._sample(job, token, results, logits):
                    self.active_jobs.remove(job)  # iterate_gen 1290-1291: deallocate, remove
        return results

    def _start_jobs(self, results):
        batch = len(self.active_jobs)
        free = self.max_pages - sum(j.pages for j in self.active_jobs)
        skipped = []
        for job in list(self.pending_jobs):
            if batch >= self.max_batch_size or job.pages > free:
                skipped.append(job)
                continue
            if any(j.skips >= self.max_skips for j in skipped):
                return
            for j in skipped:
                j.skips += 1
            self.pending_jobs.remove(job)
            self.active_jobs.append(job)
            batch, free = batch + 1, free - job.pages
            r = {"job": job, "stage": "started", "eos": False, "serial": job.serial_number}
            if job.identifier is not None:
                r.update({"identifier": job.identifier})
            results.append(r)

    def _prefill(self, job, results):
        if job.kv_position >= len(job.ids) - 1:
            return
        if job.kv_position == 0:
            job.time_first_prefill = time.time()
            self.prefilled.append(job.identifier)
        job.kv_position = min(job.kv_position + self.max_chunk_size, len(job.ids) - 1)
        r = {"job": job, "stage": "prefill", "eos": False, "curr_progress": job.kv_position,
             "max_progress": len(job.ids) - 1, "serial": job.serial_number}
        if job.identifier is not None:
            r.update({"identifier": job.identifier})
        results.append(r)

    def _draw(self, job):
        """receive_logits() and ExLlamaV2Sampler.sample() for one job: (token id, the (1, 1, vocab) logits)."""
        if job.new_tokens == 0:
            for f in job.filters:
                f.background_drop()
                f.begin("")
        logits = self.logits(job.ids + job.sampled).float().view(1, 1, -1)
        scores, keep = logits[0, 0], None  # a view: what the sampler does in place reaches the kept logits
        if job.filters and all(f.can_mask_logits() for f in job.filters):
            for f in job.filters:
                assert f.get_next(mask=True) is True, "filter is not precomputing mask"
                scores = f.mask_logits(scores)
        elif job.filters:
            allowed = None
            for f in job.filters:
                pt, _et = f.get_next()
                allowed = set(pt) if allowed is None else allowed & set(pt)
            assert allowed, "Filter excluded all tokens"
            keep = torch.zeros_like(scores, dtype=torch.bool)  # 0.3.2's logit_filter, beside the logits
            keep[sorted(allowed)] = True
        if self.vocab_size < scores.shape[-1]:
            scores[self.vocab_size:] = float("-inf")
        if keep is not None:
            scores = scores.masked_fill(~keep, float("-inf"))
        s = job.gen_settings
        if s.top_k == 1:
            return int(scores.argmax()), logits
        probs = torch.softmax(scores / max(s.temperature, 1e-3), dim=-1)
        return int(torch.multinomial(probs, 1, generator=job.rng)), logits

    def _sample(self, job, token, results, logits=None):
        """receive_sample(): returns True when the job ended."""
        for f in job.filters:
            f.feed(torch.tensor([[token]]))
        if job.filters:
            all_mask = all(f.can_mask_logits() and f.use_background_worker() for f in job.filters)
            self.filter_queue += [(f, all_mask) for f in job.filters if all_mask or f.use_background_worker()]
        job.sampled.append(token)
        if job.return_logits:
            job.held_logits.append(logits)
        job.new_tokens += 1
        if job.new_tokens == 1:
            job.time_first_token = time.time()
        new_text = self.piece(token)
        job.held_text += new_text
        job.held_tokens.append(token)
        if token in job.stop_tokens:
            return self._emit(job, results, eos=True, eos_reason="stop_token", stop_token=token)
        if job.new_tokens >= job.max_new_tokens:
            return self._emit(job, results, eos=True, emit_held=True, eos_reason="max_new_tokens")
        if 1 <= job.held_text.count("\ufffd") < 5:
            test_decode = self.tokenizer.decode(job.held_tokens, skip_special_tokens=True)
            if "\ufffd" not in test_decode:
                job.held_text = test_decode
            else:
                return self._emit(job, results)
        if job.stop_strings_list:
            match = partial_strings_match(job.held_text, job.stop_strings_list)
            if match >= 0:
                held = job.held_text[match:]
                job.held_text = job.held_text[:match]
                for s in job.stop_strings:
                    if held.startswith(s):
                        return self._emit(job, results, eos=True, emit_held=True, eos_reason="stop_string",
                                          stop_string=s, rem_held_text=held)
                assert False, "Detected stop string but couldn't identify it (logic error)"
            if match == -2:
                return self._emit(job, results)
        return self._emit(job, results, emit_held=True)

    def _emit(self, job, results, eos=False, eos_reason=None, emit_held=False, stop_token=None, stop_string=None,
              rem_held_text=None):
        r = {"job": job, "stage": "streaming", "eos": eos, "serial": job.serial_number}
        if eos_reason is not None:
            r.update({"eos_reason": eos_reason})
            if eos_reason == "stop_token":
                r.update({"eos_triggering_token_id": stop_token,
                          "eos_triggering_token_str": self.piece(stop_token, include_special_tokens=True)})
            if eos_reason == "stop_string":
                r.update({"eos_triggering_string": stop_string})
        if emit_held:
            if job.held_text != "":
                job.full_completion += job.held_text
                r.update({"text": job.held_text})
                job.held_text = ""
            if job.held_tokens:
                r.update({"token_ids": list(job.held_tokens)})
                job.held_tokens = []
            if job.held_logits:
                r.update({"logits": torch.cat(job.held_logits, dim=1)})
                job.held_logits = []
        if eos:
            now = time.time()
            r.update({"full_completion": job.full_completion, "new_tokens": job.new_tokens,
                      "prompt_tokens": len(job.ids), "time_enqueued": job.time_first_prefill - job.time_enqueue,
                      "time_prefill": job.time_first_token - job.time_first_prefill,
                      "time_generate": now - job.time_first_token, "cached_pages": 0, "cached_tokens": 0})
            if eos_reason == "stop_string":
                job.held_text = rem_held_text
            rh = {}
            if job.held_text:
                rh.update({"text": job.held_text})
            if job.held_tokens:
                rh.update({"token_ids": list(job.held_tokens)})
            if job.held_logits:
                rh.update({"logits": torch.cat(job.held_logits, dim=1)})
            if rh:
                r.update({"held": rh})
        if job.identifier is not None:
            r.update({"identifier": job.identifier})
        results.append(r)
        return eos
