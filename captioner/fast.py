"""The fast Qwen2-VL engine (`captioning.engine: qwen2vl_fast`): the same greedy captions as `captioner.qwen2vl`
(transformers' `generate`), with the per-step overhead of `generate` taken out of the decode loop.

Where `generate` spends its time on a GPU is the host: every decode step runs the 28 decoder layers as Python, grows
the key/value cache by concatenation and rebuilds the attention mask, so one step of a 7B model at 64 rows costs tens
of milliseconds while the GPU needs a few. This engine:

- prefills with `generate` itself (one new token, `return_dict_in_generate`): the vision encoder, the M-RoPE position
  ids, the logits processors and the first token are transformers' own, so the first token is the reference's;
- prefills in chunks of `prefill_rows` rows sorted by prompt length (less padding, and a lower memory peak, so the
  decode batch can be larger than what one prefill could hold); the processor (frame normalisation, patching) of the
  next chunk runs in a thread while the current chunk is on the GPU;
- decodes in its own loop over a static key/value cache (one buffer per layer, prompt right-aligned, written in
  place at one index per step), a boolean attention mask and M-RoPE positions kept on the device and advanced in
  place, calling transformers' own decoder layers, norm and head, so the arithmetic is the reference's;
- on CUDA, captures that step once as a CUDA graph and replays it (`cuda_graphs`), so a step is one launch; the
  buffers and the graph are kept for the next call of the same shape (rows, cache length rounded up to 256);
- runs the vision encoder's attention (`segment_attention`) as one SDPA call over all frame groups of a chunk:
  transformers' Qwen2-VL makes one SDPA call per group of frames and reads the group lengths back to the host in
  every one of its 32 layers; the groups of a clip have equal lengths, so they stack as a batch (groups of unequal
  length fall back to one call each);
- applies the same logits processors as `generate` (built by transformers from the same generation config:
  `min_new_tokens`, repetition penalty, ...) outside the graph, takes the arg-max, pads finished rows with the pad
  token, and checks for the end of every row only every `sync_every` steps (one host sync), trimming the extra steps.

Greedy only (sampling and beams are refused). What differs from `generate`: attention runs over the padded static
length (masked keys add exact zeros, but a kernel may sum in another order), and rows of different prefill chunks
are padded differently; in float32 on the CPU the tokens are the reference's (tests/test_captioner_engines.py), on a
GPU in bfloat16 `bench/caption.py` reports the share of identical captions.

Not used, and why: transformers' continuous batching (`generate_batch`) takes token lists only (no pixels, no
M-RoPE); `torch.compile` is not needed for the graph (the step is captured eagerly) and would add minutes of
compilation per actor and shape.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np

from captioner.prompts import build_prompt
from captioner.qwen2vl import Qwen2VLCaptioner, fit_size


# transformers sends packed vision attention (with the group boundaries, `cu_seq_lens_q`) only to an attention
# function whose registered name contains "flash" (`is_flash_attention_requested`); any other name gets one call per
# group. The name says what it is: SDPA, called the way flash attention's variable-length interface is.
SEGMENT_ATTENTION = "sdpa_segments_flash_interface"


def grouped_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any = None,
                      scaling: float | None = None, dropout: float = 0.0, cu_seq_lens_q: Any = None,
                      max_length_q: int | None = None, **kwargs: Any) -> tuple[Any, None]:
    """Bidirectional attention inside each group of `cu_seq_lens_q` for (1, heads, N, dim) inputs; (1, N, heads, dim)
    out. Groups of equal length (every group of a batch of same-size clips) run as one batched SDPA call."""
    import torch
    import torch.nn.functional as F

    if attention_mask is not None or cu_seq_lens_q is None or kwargs.get("is_causal"):
        raise ValueError("grouped_sdpa: bidirectional attention within cu_seqlens groups only (no mask, not causal)")
    heads, total, dim = query.shape[1:]
    groups = int(cu_seq_lens_q.numel()) - 1
    if max_length_q is not None and groups * int(max_length_q) == total:  # max × count = sum: all lengths equal
        length = total // groups

        def stack(t: Any) -> Any:
            return t[0].reshape(heads, groups, length, dim).transpose(0, 1)

        out = F.scaled_dot_product_attention(stack(query), stack(key), stack(value), scale=scaling)
        return out.permute(0, 2, 1, 3).reshape(1, total, heads, dim), None
    bounds = cu_seq_lens_q.tolist()
    outs = [F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], scale=scaling)
            for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(outs, 2).transpose(1, 2), None


def _register_segment_attention() -> None:
    """Make `SEGMENT_ATTENTION` known to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(SEGMENT_ATTENTION, lambda *a, **kw: grouped_sdpa(*a, **kw))  # late-bound


class _Decoder:
    """Static decode state for `rows` rows and `length` cache positions: key/value buffers per layer, mask, next
    tokens, positions, write index; `step()` runs one decode step on them in place (and is what the graph holds).
    It is also the cache object the decoder layers write to (`update`)."""

    def __init__(self, net: Any, rows: int, length: int, device: Any):
        import torch

        tc = net.config.text_config
        lm = net.model.language_model
        heads = tc.num_key_value_heads
        dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        dtype = lm.embed_tokens.weight.dtype
        self.net, self.rows, self.length = net, rows, length
        # zeros, not empty: a masked key gets weight 0, and 0 * NaN from uninitialised memory would be NaN.
        self.keys = [torch.zeros(rows, heads, length, dim, dtype=dtype, device=device) for _ in lm.layers]
        self.values = [torch.zeros(rows, heads, length, dim, dtype=dtype, device=device) for _ in lm.layers]
        self.mask = torch.zeros(rows, 1, 1, length, dtype=torch.bool, device=device)
        self.tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(3, rows, 1, dtype=torch.long, device=device)
        self.index = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: Any = None
        self.logits: Any = None

    # The cache protocol of transformers' attention layers (the only call they make on it).
    def update(self, key: Any, value: Any, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """Write this step's key/value at the write index; return the whole buffers."""
        self.keys[layer_idx].index_copy_(2, self.index, key)
        self.values[layer_idx].index_copy_(2, self.index, value)
        return self.keys[layer_idx], self.values[layer_idx]

    def step(self) -> Any:
        """One decode step in place: float32 logits (rows, vocab) of `tokens`; index and positions advance."""
        lm = self.net.model.language_model
        self.mask.index_fill_(-1, self.index, True)  # the new token sees itself
        hidden = lm.embed_tokens(self.tokens)
        rope = lm.rotary_emb(hidden, self.positions)
        for layer in lm.layers:
            hidden = layer(hidden, attention_mask=self.mask, position_embeddings=rope, position_ids=None,
                           past_key_values=self, use_cache=True)
        logits = self.net.lm_head(lm.norm(hidden)[:, -1:])[:, -1].float()
        self.index.add_(1)
        self.positions.add_(1)
        return logits

    def run(self, graphs: bool) -> Any:
        """One step: the captured CUDA graph when `graphs` (captured on first use), else eager."""
        import torch

        if not graphs:
            return self.step()
        if self.graph is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.prime()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.logits = self.step()
            self.graph = graph
        self.graph.replay()
        return self.logits

    def prime(self) -> None:
        """One step run and undone (index, positions, mask back), as the warm-up before a graph capture: the key and
        value it wrote are the ones the real step writes again."""
        saved = (self.index.clone(), self.positions.clone(), self.mask.clone())
        self.step()
        self.index.copy_(saved[0])
        self.positions.copy_(saved[1])
        self.mask.copy_(saved[2])


class FastQwen2VLCaptioner(Qwen2VLCaptioner):
    """Qwen2-VL captions with the reference's greedy tokens: chunked prefill by `generate`, own static-cache decode
    loop (a CUDA graph per step on GPUs), end-of-row checks every `sync_every` steps."""

    prefill_rows = 16  # rows per prefill chunk (vision encoder + prompt); the decode step runs all rows at once
    sync_every = 16  # decode steps between checks whether every row has finished (each check waits for the GPU)
    cuda_graphs = True  # capture the decode step as a CUDA graph (CUDA only)
    length_multiple = 256  # cache length rounding on CUDA, so calls of similar prompt length reuse one graph
    segment_attention = True  # the vision encoder's attention as one batched call over frame groups (see above)

    def configure(self, **options: Any) -> FastQwen2VLCaptioner:
        """Set `prefill_rows`, `sync_every`, `cuda_graphs`, `length_multiple` or `segment_attention`; returns self."""
        for key, value in options.items():
            if key not in ("prefill_rows", "sync_every", "cuda_graphs", "length_multiple", "segment_attention"):
                raise TypeError(f"FastQwen2VLCaptioner.configure: unknown option {key!r}")
            setattr(self, key, value)
        if self.prefill_rows < 1 or self.sync_every < 1 or self.length_multiple < 1:
            raise ValueError("prefill_rows, sync_every and length_multiple must be >= 1")
        return self

    def _prompt_cost(self, item: dict[str, Any]) -> int:
        """About how many prompt tokens a row has (vision tokens + text), to sort rows into prefill chunks."""
        frames = np.asarray(item["frames"])
        h, w = fit_size(frames.shape[1], frames.shape[2], self.short_side)
        grid = (h // 28) * (w // 28)
        n = 1 if item["media_type"] == "image" else max(1, len(frames) // 2)
        text, _ = build_prompt(str(item["media_type"]), item.get("ocr_text"), self.use_ocr, self.max_ocr_chars)
        return n * grid + len(text) // 3

    def generate_ids(self, items: list[dict[str, Any]], **generate: Any) -> tuple[Any, list[bool]]:
        """(generated token ids (rows, T) on the CPU, whether OCR text was in each prompt), as the reference's."""
        import warnings

        import torch

        if not items:
            return torch.zeros(0, 0, dtype=torch.long), []
        opts = {"max_new_tokens": self.max_new_tokens, "do_sample": False, **generate}
        if opts.get("do_sample") or opts.get("num_beams", 1) != 1 or opts.get("num_return_sequences", 1) != 1:
            raise ValueError("the qwen2vl_fast engine decodes greedily only (no sampling, beams or several returns)")
        t0 = time.perf_counter()
        stats: dict[str, float] = {"prepare_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0, "steps": 0}
        net, device = self.model, self.model.device
        rows = len(items)
        order = sorted(range(rows), key=lambda i: self._prompt_cost(items[i]))
        chunks = [order[i:i + self.prefill_rows] for i in range(0, rows, self.prefill_rows)]
        max_new = int(opts["max_new_tokens"])

        def prepare(chunk: list[int]) -> tuple[Any, list[bool], float]:
            t = time.perf_counter()
            inputs, ocr = self.inputs([items[i] for i in chunk])  # one worker thread: one chunk at a time
            return inputs, ocr, time.perf_counter() - t

        with_ocr: list[bool] = [False] * rows
        parts: list[tuple[Any, Any, Any, Any, Any]] = []  # per chunk: ids, mask, first tokens, cache, last positions
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        with ThreadPoolExecutor(1) as pool, torch.inference_mode():
            pending = pool.submit(prepare, chunks[0])
            for k, chunk in enumerate(chunks):
                inputs, ocr, spent = pending.result()
                stats["prepare_s"] += spent
                if k + 1 < len(chunks):  # the processor works on the next chunk while this one is on the GPU
                    pending = pool.submit(prepare, chunks[k + 1])
                for i, flag in zip(chunk, ocr):
                    with_ocr[i] = flag
                t = time.perf_counter()
                inputs = inputs.to(device)
                with warnings.catch_warnings(), self._vision_attention():
                    warnings.simplefilter("ignore", UserWarning)  # min_new_tokens > 1 new token: it acts on this one
                    out = net.generate(**inputs, **{**opts, "max_new_tokens": 1, "return_dict_in_generate": True})
                keep = {k2: v for k2, v in inputs.items()
                        if k2 in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw",
                                  "video_grid_thw")}
                last = net._prepare_position_ids_for_generation(inputs["input_ids"], keep)[1:, :, -1]  # (3, b)
                parts.append((inputs["input_ids"], inputs["attention_mask"], out.sequences[:, -1],
                              out.past_key_values, last))
                del out
                sync()
                stats["prefill_s"] += time.perf_counter() - t
            t = time.perf_counter()
            ids = self._decode(parts, opts, max_new, stats)
            sync()
            stats["decode_s"] = time.perf_counter() - t
        result = torch.empty_like(ids)
        result[torch.tensor(order)] = ids  # back to the callers' row order
        stats["total_s"] = time.perf_counter() - t0
        self.last_stats = stats
        return result, with_ocr

    @contextlib.contextmanager
    def _vision_attention(self) -> Iterator[None]:
        """While prefilling: the vision encoder's attention is `segment_attention` (when on), put back after, so a
        reference engine sharing the loaded model is unaffected."""
        visual = getattr(getattr(self.model, "model", None), "visual", None)
        if not self.segment_attention or visual is None:
            yield
            return
        _register_segment_attention()
        before = visual.config._attn_implementation
        if before != "sdpa":  # eager (its own arithmetic) or real flash attention (already one call): leave it
            yield
            return
        visual.config._attn_implementation = SEGMENT_ATTENTION
        try:
            yield
        finally:
            visual.config._attn_implementation = before

    def _decode(self, parts: list[tuple[Any, Any, Any, Any, Any]], opts: dict[str, Any], max_new: int,
                stats: dict[str, float]) -> Any:
        """Generated ids (rows in chunk order, T) on the CPU: the decode loop over all chunks' rows at once."""
        import warnings

        import torch
        from transformers import LogitsProcessorList

        net = self.model
        device = net.device
        rows = sum(p[0].shape[0] for p in parts)
        prompt = max(p[0].shape[1] for p in parts)
        graphs = self.cuda_graphs and device.type == "cuda"
        multiple = self.length_multiple if device.type == "cuda" else 1
        length = -(-(prompt + max_new) // multiple) * multiple
        state = getattr(self, "_state", None)
        if state is None or (state.rows, state.length) != (rows, length):
            self._state = None  # free the old buffers and graph before allocating new ones
            state = self._state = _Decoder(net, rows, length, device)

        gc, model_kwargs = net._prepare_generation_config(None, **opts)
        pad_id = gc.pad_token_id if gc.pad_token_id is not None else gc.eos_token_id
        pad_id = pad_id[0] if isinstance(pad_id, (list, tuple)) else pad_id
        ids = torch.full((rows, prompt + max_new), pad_id if pad_id is not None else 0, dtype=torch.long,
                         device=device)
        mask2d = torch.zeros(rows, prompt, dtype=torch.long, device=device)
        state.mask.zero_()
        row = 0
        for chunk_ids, chunk_mask, first, cache, last in parts:
            b, n = chunk_ids.shape
            sl = slice(row, row + b)
            ids[sl, prompt - n:prompt] = chunk_ids  # right-aligned: more left padding, masked like the rest
            ids[sl, prompt] = first
            mask2d[sl, prompt - n:] = chunk_mask
            for layer in range(len(state.keys)):
                keys, values = cache.layers[layer].keys, cache.layers[layer].values
                state.keys[layer][sl, :, prompt - n:prompt] = keys[:, :, -n:]
                state.values[layer][sl, :, prompt - n:prompt] = values[:, :, -n:]
                cache.layers[layer].keys = cache.layers[layer].values = None  # free the chunk's cache as we go
            state.positions[:, sl, 0] = last + 1
            row += b
        state.mask[:, 0, 0, :prompt] = mask2d.bool()
        state.index.fill_(prompt)
        state.tokens[:, 0] = ids[:, prompt]

        model_kwargs = {**model_kwargs, "attention_mask": mask2d}
        net._prepare_special_tokens(gc, True, device=device, batch_size=rows)
        gc = net._prepare_generated_length(gc, has_default_max_length=True, has_default_min_length=True,
                                           model_input_name="input_ids", input_ids_length=prompt,
                                           inputs_tensor=ids[:, :prompt])
        processors = net._get_logits_processor(gc, input_ids_seq_length=prompt, encoder_input_ids=ids[:, :prompt],
                                               prefix_allowed_tokens_fn=None, logits_processor=LogitsProcessorList(),
                                               device=device, model_kwargs=model_kwargs)
        eos = gc._eos_token_tensor
        pad = gc._pad_token_tensor
        unfinished = ~torch.isin(ids[:, prompt], eos) if eos is not None else torch.ones(rows, dtype=torch.bool,
                                                                                           device=device)
        done = 1
        stats["cuda_graphs"] = graphs
        while done < max_new and (eos is None or done % self.sync_every or bool(unfinished.any())):
            try:
                logits = state.run(graphs)
            except RuntimeError as exc:
                if not graphs or state.graph is not None:
                    raise
                # The capture failed (an op that cannot be captured): decode eagerly from here on, and say so.
                warnings.warn(f"qwen2vl_fast: CUDA graph capture failed, decoding without graphs: {exc}")
                self.cuda_graphs = graphs = stats["cuda_graphs"] = False
                stats["graph_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                logits = state.step()
            scores = processors(ids[:, :prompt + done], logits)
            nxt = scores.argmax(-1)
            if eos is not None:
                nxt = torch.where(unfinished, nxt, pad)
                unfinished &= ~torch.isin(nxt, eos)
            ids[:, prompt + done] = nxt
            state.tokens.copy_(nxt[:, None])
            done += 1
            stats["steps"] += 1
        new = ids[:, prompt:prompt + done].cpu()
        if eos is not None:
            # Trim the steps after the last row finished (checked every sync_every steps): `generate` stops there.
            is_eos = torch.isin(new, eos.cpu())
            ends = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.tensor(done))
            new = new[:, : int(ends.max())]
        return new
