"""Deliberate-bug check: break one behaviour at a time in a copy of the repo and run the tests that guard it.

Each mutation is a textual patch (old text -> new text) on the package (or a script). The old text
must occur exactly `count` times (default once, all in one file) among the files it searches, so a mutation whose anchor has gone
(someone rewrote that code) is reported as STALE instead of being skipped silently; update its
anchor then. For every mutation the script copies nothing again: one temporary copy of the working
tree is made, the patch is applied, the mutation's tests run with that copy's `src/` first on the
path, and the file is restored.

Outcomes: killed (a test failed), SURVIVED (every selected test passed: the suite misses the bug),
STALE (anchor not found once), error (pytest could not run the selection: rc 2-5 or a timeout).
A baseline run of each distinct test selection on the unmutated copy comes first; a selection that
fails unmutated makes its mutations "invalid" (the suite is red, so a kill proves nothing).

    .venv/bin/python scripts/mutation_check.py                 # all mutations
    .venv/bin/python scripts/mutation_check.py --only gpt2-ln-swap,eps-10x
    .venv/bin/python scripts/mutation_check.py --list
    .venv/bin/python scripts/mutation_check.py --anchors      # is every anchor still there? (no tests)
    make mutation

Writes a table to stdout and JSON (with the command, commit and per-mutation results) to
benchmarks/mutation_check.json. Exit status 1 if any mutation survives or is stale/invalid/error
(issue 14 requires that none of its table survives); 0 otherwise. Not part of the default suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "src/contextpool_hf"


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    what: str  # the behaviour broken, in words
    old: str  # anchor text; must occur exactly once in `where`
    new: str
    tests: tuple[str, ...]  # pytest arguments selecting the guarding tests
    where: str = PACKAGE  # a file or a folder (searched recursively, *.py) relative to the repo
    issue_table: bool = False  # one of issue 14's "every test still passed" bugs
    count: int = 1  # how often the anchor must occur (all in one file); every occurrence is replaced


def _k(path: str, expr: str) -> tuple[str, ...]:
    return (path, "-k", expr)


ORACLE = "tests/test_convert_oracle.py"
WINDOW_TESTS = ("tests/test_convert.py", "tests/test_static_cache.py", "tests/test_transformers_features.py")
LOGITS = "tests/test_logits_equivalence.py"

MUTATIONS: list[Mutation] = [
    # --- issue 14's table ---------------------------------------------------------------------
    Mutation(
        "gpt2-ln-swap", "GPT-2 conversion maps ln_1 to the MLP norm and ln_2 to the attention norm",
        '[("attn_norm", "ln_1", True), ("mlp_norm", "ln_2", True)]',
        '[("attn_norm", "ln_2", True), ("mlp_norm", "ln_1", True)]',
        _k(ORACLE, "GPT2"), issue_table=True,
    ),
    Mutation(
        "llama-norm-swap", "Llama conversion swaps input_layernorm and post_attention_layernorm",
        '("attn_norm", "input_layernorm", False),\n        ("mlp_norm", "post_attention_layernorm", False),',
        '("attn_norm", "post_attention_layernorm", False),\n        ("mlp_norm", "input_layernorm", False),',
        _k(ORACLE, "Llama"), issue_table=True,
    ),
    Mutation(
        "verify-conversion-zero", "verify_conversion returns 0.0 whatever the models do",
        "    return worst\n", "    return 0.0 * worst\n",
        _k(ORACLE, "verify_conversion"), issue_table=True,
    ),
    Mutation(
        "causal-predictor-ignores-padding", "causal predictors ignore the padding mask (left padding leaks)",
        "        h = _predictor_input(self.in_proj, hidden, keep)\n",
        "        h = _predictor_input(self.in_proj, hidden, None if self.causal else keep)\n",
        _k(LOGITS, "module or text_padded"), issue_table=True, count=2,  # the plain and the fused predictor
    ),
    # --- the issue's other weak spots and the kinds it names ------------------------------------
    Mutation(
        "bert-qk-swap", "BERT conversion maps query to k_proj and key to q_proj",
        '("attention.q_proj", "attention.self.query", True),\n        ("attention.k_proj", "attention.self.key", True),',
        '("attention.q_proj", "attention.self.key", True),\n        ("attention.k_proj", "attention.self.query", True),',
        _k(ORACLE, "Bert"),
    ),
    Mutation(
        "gpt2-c_attn-order", "GPT-2 conversion splits c_attn as [k | q | v]",
        'enumerate(("q_proj", "k_proj", "v_proj"))', 'enumerate(("k_proj", "q_proj", "v_proj"))',
        _k(ORACLE, "GPT2"),
    ),
    Mutation(
        "qwen3-qk-norm-swap", "Qwen3 conversion maps q_norm to k_norm and k_norm to q_norm",
        '[("attention.q_norm", "self_attn.q_norm", False), ("attention.k_norm", "self_attn.k_norm", False)]',
        '[("attention.q_norm", "self_attn.k_norm", False), ("attention.k_norm", "self_attn.q_norm", False)]',
        _k(ORACLE, "Qwen3"),
    ),
    Mutation(
        "seq2seq-norm-swap", "Marian/BART conversion swaps self_attn_layer_norm and final_layer_norm",
        "_KEY_MAP = [\n",
        '_KEY_MAP = [\n    (r"^(.*)\\.self_attn_layer_norm\\.(weight|bias)$", r"\\1.final_layer_norm.\\2"),\n'
        '    (r"^(.*)\\.final_layer_norm\\.(weight|bias)$", r"\\1.self_attn_layer_norm.\\2"),\n',
        _k(ORACLE, "seq2seq"),
    ),
    Mutation(
        "vit-norm-swap", "ViT conversion swaps layernorm_before and layernorm_after",
        'state = {k: v for k, v in source.state_dict().items() if not k.startswith("vit.pooler.")}',
        'state = {k.replace("layernorm_before", "@").replace("layernorm_after", "layernorm_before")'
        '.replace("@", "layernorm_after"): v for k, v in source.state_dict().items() if not k.startswith("vit.pooler.")}',
        _k(ORACLE, "vision"),
    ),
    Mutation(
        "pool-mask-ignored", "the ContextPool module drops the attention mask (padding gets weight)",
        '            keep = _mask_as_weights(attention_mask, "attention_mask")\n',
        '            keep = None\n',
        _k(LOGITS, "module"),
    ),
    Mutation(
        "eps-10x", "the pooling normaliser's eps is 1e-5 instead of the spec's 1e-6",
        "    return 1e-6\n", "    return 1e-5\n",
        _k("tests/test_ops.py", "spec_oracle"),
    ),
    Mutation(
        "cache-slot-off-by-one", "a decode step writes the ring slot after the oldest one",
        '        index = plan.slot_index[slot]\n',
        '        index = plan.slot_index[(slot + 1) % window]\n',
        _k(LOGITS, "cached_equal_uncached and not seq2seq"),
    ),
    Mutation(
        "decode-ignores-padding", "a decode step gives padded positions pooling weight",
        "    if keep is not None:\n        weights = weights * keep.unsqueeze(1).to(weights.dtype)\n",
        "    if False:\n        weights = weights * keep.unsqueeze(1).to(weights.dtype)\n",
        _k(LOGITS, "left_padded"), where=f"{PACKAGE}/decoding_contextpool.py",
    ),
    # --- the call-count work of issue 15 (stop 27): exact rewrites and in-place ring writes ------------------------
    Mutation(
        "ring-overwritten-unowned", "an inference step overwrites a ring it did not make (e.g. the prompt's, a view "
        "of hidden states the caller holds)",
        "        layer_cache.owned_ring is not None\n        and layer_cache.owned_ring[0] is ring_features\n"
        "        and layer_cache.owned_ring[1] is ring_weights\n",
        "        True\n",
        _k("tests/test_generation.py", "overwrite_only_their_own_ring"),
    ),
    Mutation(
        "ring-overwritten-while-recording", "a step overwrites the ring while the cache records rings for crop",
        "        and not layer_cache.record_past\n", "",
        _k("tests/test_generation.py", "copy_the_ring"),
    ),
    Mutation(
        "ring-written-across-inference-mode", "a step under no_grad writes in place a ring made under inference_mode",
        "        and (not ring_features.is_inference() or torch.is_inference_mode_enabled())\n", "",
        _k("tests/test_generation.py", "no_grad_after_steps_under_inference_mode"),
    ),
    Mutation(
        "static-cache-inference-mode-unchecked", "a static cache filled under inference_mode fails deep in torch elsewhere",
        "        if not torch.compiler.is_compiling() and buffer.is_inference() and not torch.is_inference_mode_enabled():",
        "        if False:",
        _k("tests/test_static_cache.py", "misuse_raises_a_clear_error"),
    ),
    Mutation(
        "kept-tables-made-in-inference-mode", "tables kept between calls are made as inference tensors under inference_mode",
        "    with torch.inference_mode(False):\n        return build()\n", "    return build()\n",
        ("tests/test_generation.py", "tests/test_ops.py", "-k", "tables_kept_from_inference_mode or tile_tables_kept"),
    ),
    Mutation(
        "rotary-sign-swapped", "the folded rotary sine carries its minus sign on the wrong half",
        "signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)",
        "signed_sin = torch.cat((sin[..., :half], -sin[..., half:]), dim=-1)",
        _k("tests/test_modeling.py", "rotary_tables"),
    ),
    Mutation(
        "rms-norm-eps-dropped", "the float32 RMSNorm call falls back to F.rms_norm's own eps",
        "F.rms_norm(hidden, self.weight.shape, self.weight, self.eps)",
        "F.rms_norm(hidden, self.weight.shape, self.weight)",
        _k("tests/test_modeling.py", "rms_norm_is_llamas"),
    ),
    Mutation(
        "pool-causal-ignored", "the 1-D operator's blocks (dense and banded) let a token pool later tokens",
        "    if causal:\n        inside = inside & (dist <= 0)\n", "    if False:\n        inside = inside & (dist <= 0)\n",
        _k("tests/test_ops.py", "dense_and_blocked_plans or chunked_1d"),
    ),
    Mutation(
        "autocast-left-on", "the operator runs under autocast: its matmuls in bf16, the 2-D backward on mixed dtypes",
        "        with torch.autocast(device_type, enabled=False):\n",
        "        with torch.autocast(device_type, enabled=True):\n",
        _k("tests/test_ops.py", "autocast"),
    ),
    Mutation(
        "kv-append-into-replaced-cache", "the keys/values buffer is appended to after crop or beam reordering replaced "
        "the keys, overwriting tokens that earlier results still show",
        "        if views is None or views[0] is not self.keys or views[1] is not self.values:\n",
        "        if views is None:\n",
        ("tests/test_kv_append.py",),
    ),
    Mutation(
        "kv-append-with-autograd-on", "a decoding step with autograd on appends in place, into keys saved for backward",
        "        if torch.is_grad_enabled() or torch.compiler.is_compiling() or _is_exporting():\n",
        "        if torch.compiler.is_compiling() or _is_exporting():\n",
        ("tests/test_kv_append.py",),
    ),
    Mutation(
        "compiled-pool-backward-unnormalised", "the compiled pooling's backward forgets the normalisers",
        "    grads = _pool_1d_backward(grad, x, weights, sigma, y, denom if denom.numel() else None, radius, causal,\n",
        "    grads = _pool_1d_backward(grad, x, weights, sigma, y, None, radius, causal,\n",
        ("tests/test_compiled_ops.py",),
    ),
    Mutation(
        "compiled-mix-swapped", "under torch.compile the mix weighs the features by mix and their pooled context by 1 - mix",
        "        return original * (1 - mix) + pooled * mix\n",
        "        return original * mix + pooled * (1 - mix)\n",
        _k("tests/test_modeling.py", "torch_compile"),
    ),
    Mutation(
        "compiled-radius-clamp-graph-break", "the radius clamp takes max(sizes, default=0), which breaks a compiled graph",
        "    largest = 0\n    for size in in_sizes:\n        if size > largest:\n            largest = size\n",
        "    largest = max(in_sizes, default=0)\n",
        _k("tests/test_compiled_ops.py", "sequence_length"),
    ),
    Mutation(
        "2d-gates-keep-gelu-output", "the compiled 2-D predictor's gates go through autograd's own nodes, which keep the GELU output",
        "            _is_plain_layer(proj)\n            and conv.dtype == proj.weight.dtype\n",
        "            False\n            and conv.dtype == proj.weight.dtype\n",
        _k("tests/test_compiled_ops_2d.py", "keep_the_conv"),
    ),
    Mutation(
        "2d-gates-keep-conv-output", "the 2-D predictor's gates in training keep the conv output (no fused 2-D function)",
        "            self.spatial_dims == 2\n            and self.reads_weights_directly\n",
        "            self.spatial_dims == -2\n            and self.reads_weights_directly\n",
        _k("tests/test_predictor_layouts.py", "keep_their_input_only"),
    ),
    Mutation(
        "2d-predictor-recomputed-without-bias", "the fused 2-D predictor's backward recomputes its conv output without the bias",
        "conv = _conv2d_rows(h, conv_weight, conv_bias)  # recomputed",
        "conv = _conv2d_rows(h, conv_weight, None)  # recomputed",
        _k("tests/test_predictor_layouts.py", "functional_definition"),
    ),
    Mutation(
        "2d-weight-grad-before-input-grad", "the 2-D pooling's backward multiplies M by x (for the weights' gradient) "
        "before the input's gradient reads M",
        "        dense_x = chunk.put_x(lay, m[..., :d] * w_k)",
        "        m[..., :d].mul_(x_halo) if need_w else None\n"
        "        dense_x = chunk.put_x(lay, m[..., :d] * w_k)",
        _k("tests/test_vision.py", "operator_forms"),
    ),
    Mutation(
        "2d-rows-without-weights", "the dense 2-D backward leaves M in the input's gradient, not scaled by the weights",
        "    rows.mul_(w_k.squeeze(2).squeeze(1))",
        "    rows.mul_(1.0)",
        _k("tests/test_vision.py", "operator_forms"),
    ),
    Mutation(
        "2d-rows-weight-grad-without-sum-column", "the dense 2-D backward drops the denominator's share of the "
        "weights' gradient (M's last column)",
        "            grad_w_halo += grad_w_t.squeeze(1)",
        "            pass",
        _k("tests/test_vision.py", "operator_forms"),
    ),
    Mutation(
        "2d-rows-keep-gauss", "the dense 2-D backward keeps the Gaussian while it forms the weights' gradient",
        "    _sigma_grad(chunk, lay, gauss, w_k, grad_num, grad_total, x_halo, tables[1], grad_inv_var, need_sigma)\n"
        "    del gauss\n",
        "    _sigma_grad(chunk, lay, gauss, w_k, grad_num, grad_total, x_halo, tables[1], grad_inv_var, need_sigma)\n",
        _k("tests/test_ops.py", "one_coefficient_temporary"),
    ),
    Mutation(
        "2d-chunk-writes-first-images", "the 2-D pooling's forward writes every chunk of images into the first images",
        "            y_t[b, k] = y_k\n",
        "            y_t[: y_k.shape[0], k] = y_k\n",
        _k("tests/test_vision.py", "operator_forms and image-chunks"),
    ),
    Mutation(
        "2d-dense-batch-unchunked", "the 2-D pooling takes a dense map's whole batch at once, whatever its size",
        "    return max(1, limit // per_image_row), 1\n",
        "    return batch, 1\n",
        _k("tests/test_ops.py", "do_not_grow"),
    ),
    Mutation(
        "mixed-projection-keeps-head-view", "the mixed projection keeps its CLS rows as a view, which keeps the whole "
        "layer-norm output",
        "ctx.save_for_backward(None if head is None else head.clone(), ",
        "ctx.save_for_backward(head, ",
        _k("tests/test_mixed_projection.py", "keeps_no_copy"),
    ),
    Mutation(
        "mixed-projection-pooled-grad", "the mixed projection's backward gives the pooled tokens the original's share "
        "(in `_lerp_grads`, which the stem's max-pool mix shares)",
        "    grad_end = grad * weight if need_end else None",
        "    grad_end = grad * (1 - weight) if need_end else None",
        _k("tests/test_mixed_projection.py", "plain_mix"),
    ),
    Mutation(
        "max-pool-mix-gate-grad-sign", "the stem's max-pool mix gives the gate the gradient of orig - pooled (in "
        "`_lerp_grads`, which the mixed projection shares)",
        "    grad_weight = (end - start).mul_(grad).sum_to_size(weight.shape) if need_weight else None",
        "    grad_weight = (start - end).mul_(grad).sum_to_size(weight.shape) if need_weight else None",
        _k("tests/test_predictor_layouts.py", "max_pool_mix_equals"),
    ),
    Mutation(
        "max-pool-mix-input-share", "the stem's max-pool mix routes the pooled share of the gradient to x",
        "max_pool2d_with_indices_backward.grad_input(\n                grad_orig, x,",
        "max_pool2d_with_indices_backward.grad_input(\n                grad * mix, x,",
        _k("tests/test_predictor_layouts.py", "max_pool_mix_equals"),
    ),
    Mutation(
        "max-pool-mix-grad-a-view", "the stem's max-pool mix returns x's gradient as a view, so autograd adds the "
        "site's other gradients of x out of place",
        "grad_input=grad_hidden.permute(0, 3, 1, 2)\n            )  # fmt: skip\n",
        "grad_input=grad_hidden.permute(0, 3, 1, 2)\n            )  # fmt: skip\n            grad_hidden = grad_hidden.view(grad_hidden.shape)\n",
        _k("tests/test_predictor_layouts.py", "adds_the_gradients"),
    ),
    Mutation(
        "stem-conv-channels-first", "the stem conv writes channels-first, so the stem site copies the map",
        "            self.embedder.channels_last_output = self.embedder.downsample is None\n",
        "            self.embedder.channels_last_output = False\n",
        _k("tests/test_predictor_layouts.py", "stem_conv_writes"),
    ),
    Mutation(
        "downsample-layout-always-channels-last", "small maps with many channels stay channels-last after a site",
        "        if 9 * channels > out_positions and mixed.device.type == \"cpu\" and not _is_compiling():\n",
        "        if False:\n",
        _k("tests/test_predictor_layouts.py", "layout_follows"),
    ),
    Mutation(
        "2d-backward-chunks-as-forward", "the 2-D backward through M takes the forward's chunk size",
        "    elif backward and not torch.compiler.is_compiling():",
        "    elif False:",
        _k("tests/test_ops.py", "smaller_chunks"),
    ),
    Mutation(
        "2d-backward-chunks-write-first-images", "the 2-D backward's chunks all write the first images' gradients",
        "            self.grad_w_pad[self.b].copy_(grad_w_halo.reshape(grad_w_halo.shape[0], *lay.in_sizes))",
        "            self.grad_w_pad[: grad_w_halo.shape[0]].copy_(grad_w_halo.reshape(grad_w_halo.shape[0], *lay.in_sizes))",
        _k("tests/test_vision.py", "operator_forms"),
    ),
    Mutation(
        "compiled-gelu-projection-traced", "under torch.compile the 2-D gates' backward is traced through, not the operator",
        "        if not _is_compiling():\n            return _gelu_projection_backward(",
        "        if True:\n            return _gelu_projection_backward(",
        _k("tests/test_compiled_ops_2d.py", "keep_the_conv or calls_the_operators"),
    ),
    Mutation(
        "predictor-conv-recomputed-without-bias", "the fused 1-D predictor's backward recomputes its conv output without the bias",
        "conv = _depthwise_conv_1d_unpadded(h, conv_weight, conv_bias, pad_left)  # recomputed: (B, n, C)",
        "conv = _depthwise_conv_1d_unpadded(h, conv_weight, None, pad_left)  # recomputed: (B, n, C)",
        ("tests/test_fused_predictor.py",),
    ),
    Mutation(
        "predictor-gelu-grad-at-output", "the predictor's backward takes GELU's derivative at the GELU output, not its input",
        "gelu_backward.grad_input(grad_act, conv, grad_input=grad_act)",
        "gelu_backward.grad_input(grad_act, F.gelu(conv), grad_input=grad_act)",
        _k("tests/test_predictor_layouts.py", "functional_definition"),
    ),
    Mutation(
        "triton-sigma-grad-power", "the Triton backward divides the widths' gradient by s^2 instead of s^3",
        "        tl.store(ds_ptr + base_out + o, grad * inv_var / s, mask=o_ok)",
        "        tl.store(ds_ptr + base_out + o, grad * inv_var, mask=o_ok)",
        _k("tests/test_triton.py", "interpreter"),
    ),
    Mutation(
        "triton-causal-leak", "the Triton kernels let a causal token pool the next one",
        "        if CAUSAL:\n            inside = inside & (rows <= 0)\n",
        "        if CAUSAL:\n            inside = inside & (rows <= 1)\n",
        _k("tests/test_triton.py", "interpreter"),
    ),
    Mutation(
        "triton-2d-columns-unbounded", "the Triton kernels' 2-D window ignores the column offset's bound",
        "(tl.abs(rows) <= radius) & (tl.abs(cols) <= radius) &", "(tl.abs(rows) <= radius) &",
        _k("tests/test_triton.py", "interpreter"),
    ),
    Mutation(
        "triton-global-not-constexpr", "a Triton kernel reads a plain Python global (the interpreter allows it, "
        "compiled Triton does not)",
        "        kept = inside & (exponent >= _MIN_EXPONENT_TL)", "        kept = inside & (exponent >= _MIN_EXPONENT)",
        _k("tests/test_triton.py", "compile"),
    ),
    Mutation(
        "static-ring-slot-off-by-one", "a static-cache decode step writes its newest pooling input one ring slot off "
        "(over a newer input than the oldest; stop 42's ring replaced the shifted window of `static-window-unshifted`)",
        "        return torch.remainder(length, self.pool_weights.shape[-1]).view(1)",
        "        return torch.remainder(length + 1, self.pool_weights.shape[-1]).view(1)",
        _k("tests/test_static_cache.py", "float64"), where="src/contextpool_hf/cache_contextpool.py",
    ),
    Mutation(
        "static-step-outside-autograd", "a static-cache decode step with autograd on pools a detached copy of its newest "
        "weight (no gradient reaches the predictor through it)",
        "            ring_weights = ring_weights.index_copy(2, slot, weights.to(ring_weights.dtype))",
        "            ring_weights = ring_weights.index_copy(2, slot, weights.detach().to(ring_weights.dtype))",
        _k("tests/test_static_cache.py", "autograd"),
    ),
    # --- stop 33: the decoding plan and the one-reduction integer mask check ----------------------------------------
    Mutation(
        "decode-plan-kept-after-rewrap", "a decoding step keeps its plan when a predictor layer is replaced by another "
        "wrapper (it would call the old one)",
        "            if cached is not None and cached[1] == key and all(map(operator.is_, cached[0], sources)):\n",
        "            if cached is not None and cached[1] == key:\n",
        _k("tests/test_generation.py", "middle_of_a_sequence"),
    ),
    Mutation(
        "decode-plan-version-ignored", "a decoding step keeps its plan after an in-place parameter update",
        "            key = (like.shape[0], like.dtype, like.device, window, pool.sigma_min, pool.sigma_max, pool.normalize,\n"
        "                   tuple(map(_storage_key, params)))  # fmt: skip\n",
        "            key = (like.shape[0], like.dtype, like.device, window, pool.sigma_min, pool.sigma_max, pool.normalize,\n"
        "                   tuple(p.data_ptr() for p in params if p is not None))  # fmt: skip\n",
        _k("tests/test_generation.py", "middle_of_a_sequence"),
    ),
    # --- stop 39: the decoding plan lives as long as its sequence -----------------------------------------------
    Mutation(
        "decode-plan-copied-with-the-cache", "a copy of a cache (copy.deepcopy of a prompt's cache) carries the "
        "kept decoding plan, and with it copies of the predictor's modules",
        '        state.pop("decode_plan", None)\n',
        "        pass\n",
        _k("tests/test_generation.py", "middle_of_a_sequence"),
    ),
    Mutation(
        "static-plan-kept-after-reset", "a static cache reused after reset() decodes with the plan of its last "
        "sequence (a weight edit through .data in between is never seen)",
        "        self.pool_started = False\n        self.decode_plan = None\n",
        "        self.pool_started = False\n",
        _k("tests/test_static_cache.py", "reused_static_cache"),
    ),
    Mutation(
        "2d-tables-kept-from-fake-mode", "the 2-D tile tables built under a FakeTensorMode are kept, and later real "
        "forwards of that geometry compute with fake tensors",
        "        if not _plain_tensors_only(tables):\n            return tables\n",
        "",
        _k("tests/test_vision.py", "fake_tensor"),
    ),
    Mutation(
        "token-check-reads-data-less", "the token-id check reads the values of fake and meta tensors (a text model "
        "under a FakeTensorMode or on meta stops there)",
        "    if input_ids.numel() == 0 or _values_unreadable(input_ids):\n",
        "    if input_ids.numel() == 0 or _is_compiling():\n",
        ("tests/test_shapes_without_data.py",),
    ),
    Mutation(
        "mask-check-reads-data-less", "a fake or meta attention mask is read to find out whether it masks anything",
        "    unreadable = not isinstance(attention_mask, torch.Tensor) or _values_unreadable(attention_mask)\n",
        "    unreadable = not isinstance(attention_mask, torch.Tensor) or _is_compiling()\n",
        _k("tests/test_shapes_without_data.py", "padded or masked or classification or seq2seq"),
    ),
    Mutation(
        "autocast-asked-of-meta", "autocast is asked about the meta device, which torch answers with an error",
        "    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)\n",
        "    return torch.is_autocast_enabled(device_type)\n",
        _k("tests/test_shapes_without_data.py", "meta"),
    ),
    # --- stop 40: layers the fast paths must call, not read: offloaded by accelerate, or with hooks ------------
    Mutation(
        "offloaded-layer-read", "the fast paths read an offloaded layer's weights (on the meta device) instead of "
        "calling the layer, whose accelerate hook loads them",
        "    return weight is None or weight.is_meta\n",
        "    return False\n",
        ("tests/test_offload.py",),
    ),
    Mutation(
        "any-hook-turns-off-fast-paths", "any accelerate hook (also one that only moves inputs, as on a model split "
        "over GPUs) makes the fast paths call the layers instead of reading their weights",
        "    return weight is None or weight.is_meta\n",
        "    return True\n",
        _k("tests/test_offload.py", "do_not_offload"),
    ),
    Mutation(
        "offloaded-bias-read-on-meta", "a bias added after pooling is read on the meta device where accelerate "
        "offloads its layer",
        "    if value is None or not value.is_meta:\n        return value\n",
        "    return value\n",
        _k("tests/test_offload.py", "bias or groups2"),
    ),
    Mutation(
        "block-output-mix-read-on-meta", "the mix of a pooled block output is read outside its module's forward, on "
        "the meta device where accelerate offloads it",
        '_parameter_value(self, "pool_mix")',
        "self.pool_mix",
        _k("tests/test_offload.py", "block_output"),
    ),
    Mutation(
        "hooked-layer-read", "the fast paths read the weights of a layer with hooks instead of calling it: a user's "
        "hooks never run, and a pruned layer's weights are stale",
        "    return bool(layer._forward_pre_hooks or layer._forward_hooks or layer._backward_pre_hooks\n",
        "    return False and bool(layer._forward_pre_hooks or layer._forward_hooks or layer._backward_pre_hooks\n",
        ("tests/test_layer_hooks.py",),
    ),
    Mutation(
        "global-hooks-ignored", "hooks on every module (register_module_forward_hook) do not count as hooks on a "
        "layer: the fast paths skip them",
        "                or layer._backward_hooks or any(_GLOBAL_MODULE_HOOKS))",
        "                or layer._backward_hooks)",
        _k("tests/test_layer_hooks.py", "every_module"),
    ),
    Mutation(
        "quantized-bias-method-ignored", "a bias given by a method (torch.ao's dynamically quantized Linear) is "
        "taken as the tensor itself, and the models with biases added after pooling fail",
        "    if callable(value) and not isinstance(value, torch.Tensor):  # quantize_dynamic's Linear: weight(), bias()\n"
        "        value = value()\n",
        "",
        _k("tests/test_layer_hooks.py", "quantized"),
    ),
    Mutation(
        "decode-tables-kept-from-fake-mode", "the decoding tables built by steps under a FakeTensorMode are kept, "
        "and later real decoding computes with fake tensors",
        "    if keep and _plain_tensors_only(value):\n",
        "    if keep:\n",
        _k("tests/test_shapes_without_data.py", "decoding_steps"),
    ),
    Mutation(
        "rotary-tables-kept-from-fake-mode", "the rotary frequencies made under a FakeTensorMode are kept for the "
        "process, and every later real forward at that base rotates with fake tensors",
        "    if not compiling and _plain_tensors_only(inv_freq):  # one made under a FakeTensorMode is valid only there\n",
        "    if not compiling:\n",
        _k("tests/test_shapes_without_data.py", "decoding_steps"),
    ),
    Mutation(
        "int-mask-zeros-ignored", "an integer attention mask with padding reads as all ones",
        "            return None if low == 1 else attention_mask != 0\n",
        "            return None\n",
        _k("tests/test_bad_input.py", "every_dtype_agree"),
    ),
    Mutation(
        "int-mask-range-unchecked", "an integer attention mask with values other than 0 and 1 is accepted",
        "        if 0 <= low and high <= 1:\n",
        "        if True:\n",
        _k("tests/test_bad_input.py", "not_0_1"),
    ),
    Mutation(
        "loss-no-shift", "the causal-LM loss predicts the current token instead of the next",
        "        labels = F.pad(labels[:, 1:], (0, 1), value=-100)\n",
        "        labels = labels\n",
        _k("tests/test_modeling.py", "causal_lm_shifts"),
    ),
    Mutation(
        "push-drops-imported-code", "the Hub upload list leaves out the modules the auto_map files import",
        '            pending.extend(_relative_imports((folder / name).read_text(encoding="utf-8")) - seen)\n',
        "            pass\n",
        _k("tests/test_hub.py", "code or upload or push"),
    ),
    Mutation(
        "seq2seq-mask-ignored", "the seq2seq model treats every source/target token as real (padding leaks)",
        "    keep = _keep_or_none(mask, name)\n",
        "    keep = None\n",
        _k(LOGITS, "seq2seq_padded"),
    ),
    Mutation(
        "classification-seed-ignored", "the classification corpus ignores its seed (every seed, one split)",
        "    rng = random.Random(seed)\n", "    rng = random.Random(0)\n",
        _k("tests/test_data.py", "seed_changes_split"),
    ),
    Mutation(
        "resume-ignored", "--resume_from_checkpoint is resolved but not passed to Trainer.train",
        "train_result = trainer.train(resume_from_checkpoint=resume)",
        "train_result = trainer.train(resume_from_checkpoint=None)",
        _k("tests/test_distributed.py", "resume_from_checkpoint_matches"),
    ),
    Mutation(
        "resume-picks-oldest", "--resume_from_checkpoint latest picks the oldest complete checkpoint",
        "        folders = _checkpoint_folders(output_dir)\n", "        folders = _checkpoint_folders(output_dir)[::-1]\n",
        _k("tests/test_training.py", "resolve_latest"),
    ),
    Mutation(
        "dynamic-outside-q-global", "the 1-D pooling's Function reads the q outside the window from a module-level "
        "float: torch.compile(dynamic=True) fails at the second pooled layer",
        "    return -1e30\n", "    return _OUTSIDE_Q\n\n\n_OUTSIDE_Q = -1e30\n",
        _k("tests/test_compile_dynamic.py", "causal_lm and fast"),
    ),
    Mutation(
        "dynamic-min-exponent-global", "the 1-D pooling's Function reads its exponent clamp from a module-level float",
        "    return -80.0\n", "    return _MIN_EXPONENT\n\n\n_MIN_EXPONENT = -80.0\n",
        _k("tests/test_compile_dynamic.py", "causal_lm and fast"),
    ),
    Mutation(
        "dynamic-2d-min-exponent-global", "the 2-D pooling reads its exponent clamp from module-level floats",
        "    return -300.0 if dtype == torch.float64 else -40.0\n",
        "    return _LOW64 if dtype == torch.float64 else _LOW32\n\n\n_LOW64, _LOW32 = -300.0, -40.0\n",
        _k("tests/test_compile_dynamic.py", "vit"),
    ),
    Mutation(
        "dynamic-eps-global", "the pooling layers pass eps from a module-level float into the Functions",
        "    return 1e-6\n", "    return _EPS\n\n\n_EPS = 1e-6\n",
        _k("tests/test_compile_dynamic.py", "causal_lm and fast"),
    ),
    Mutation(
        "dynamic-sigma-floor-global", "the sigma floor is a module-level float, read in each checkpointed layer",
        "    return 0.025\n", "    return _FLOOR\n\n\n_FLOOR = 0.025\n",
        _k("tests/test_compile_dynamic.py", "checkpointing"),
    ),
    Mutation(
        "dynamic-sort-by-stride", "dims are ordered by sorted(key=stride), which dynamo cannot do on symbolic strides",
        "    order: list[int] = []\n    for dim in range(t.dim()):\n",
        "    order = sorted(range(t.dim()), key=lambda i: (-t.stride(i), i))\n    for dim in ():\n",
        _k("tests/test_compile_dynamic.py", "reference"),
    ),
    Mutation(
        "dynamic-float-args-symbolic", "the functional ops keep symbolic float arguments (math.isfinite and the "
        "window radius then fail under torch.compile(dynamic=True))",
        "    return guard_scalar(value) if _is_real(value) else value\n", "    return value\n",
        _k("tests/test_compile_dynamic.py", "functional"),
    ),
    Mutation(
        "vit-pooled-view", "the ViT flattens its pooled patches with .view(), which a tiled grid's cropped output "
        "(17 x 17 patches) rejects",
        "sigma).reshape(batch, n - 1, d)\n", "sigma).view(batch, n - 1, d)\n",
        _k("tests/test_vision.py", "fast_matches_reference and vit"),
    ),
    Mutation(
        "cache-type-unchecked", "a cache / past_key_values that is no transformers Cache (a legacy tuple) reaches the "
        "model, which fails with an AttributeError deep inside",
        "    if cache is not None and not isinstance(cache, Cache):\n", "    if False:\n",
        _k("tests/test_bad_input.py", "not_a_transformers_cache"),
    ),
    Mutation(
        "continuous-batching-allowed", "the causal LM lets transformers' continuous batching start: every request "
        "comes back empty, the error only logged",
        "        raise NotImplementedError(CONTINUOUS_BATCHING_UNSUPPORTED)\n",
        "        return super().init_continuous_batching(*args, **kwargs)\n",
        _k("tests/test_bad_input.py", "continuous"), where="src/contextpool_hf/generation_contextpool.py",
    ),
    Mutation(
        "raw-pixels-accepted", "integer pixels (a raw 0-255 image) reach the vision models, cast to float and "
        "classified unnormalised",
        "    if not pixel_values.is_floating_point():\n",
        "    if False:\n",
        _k("tests/test_vision.py", "raw_pixels"), where="src/contextpool_hf/layers_contextpool_vision.py",
    ),
    Mutation(
        "pixels-not-cast", "pixels in another float dtype than the model's go in uncast (the ResNet's first conv "
        "fails, the ViT's too)",
        "    return pixel_values.to(dtype)\n",
        "    return pixel_values\n",
        _k("tests/test_vision.py", "another_float"), where="src/contextpool_hf/layers_contextpool_vision.py",
    ),
    Mutation(
        "int32-labels-uncast", "labels of another integer dtype than int64 (int32 from a datasets column) reach "
        "cross_entropy as they are: every text loss fails inside torch",
        "    labels = labels.long()\n",
        "    labels = labels\n",
        _k("tests/test_bad_input.py", "any_integer"), where="src/contextpool_hf/inputs_contextpool.py",
    ),
    Mutation(
        "int32-class-ids-uncast", "int32 class ids reach the classification loss as they are (sequence and image "
        "classification fail inside torch)",
        "labels.reshape(-1).long())",
        "labels.reshape(-1))",
        _k("tests/test_bad_input.py", "any_integer"), where="src/contextpool_hf/modeling_utils_contextpool.py",
    ),
    Mutation(
        "bool-ids-accepted", "a bool tensor (a mask) passes as token ids, labels or answer positions",
        "            and value.dtype != torch.bool)",
        "            and True)",
        _k("tests/test_bad_input.py", "bool_ids"), where="src/contextpool_hf/inputs_contextpool.py",
    ),
    Mutation(
        "bool-positions-accepted", "a bool tensor passes as position_ids (rotary models read a mask as positions 0 "
        "and 1)",
        "position_ids.dtype == torch.bool or position_ids.is_complex()",
        "False or position_ids.is_complex()",
        _k("tests/test_bad_input.py", "bad_position_ids"), where="src/contextpool_hf/inputs_contextpool.py",
    ),
    Mutation(
        "negative-absolute-positions-accepted", "negative learned positions (and token ids: one range check) reach "
        "the position table (an IndexError inside torch)",
        "    if low < 0 or high >= vocab_size:",
        "    if high >= vocab_size:",
        _k("tests/test_bad_input.py", "table_indices"), where="src/contextpool_hf/inputs_contextpool.py",
    ),
    Mutation(
        "class-ids-range-unchecked", "a class id outside [0, num_labels) reaches cross_entropy (torch's \"Target 5 is "
        "out of bounds\")",
        "        bad = (labels != -100) & ((labels < 0) | (labels >= num_labels))",
        "        bad = labels != labels",
        _k("tests/test_bad_input.py", "do_not_fit_name_labels"), where="src/contextpool_hf/modeling_utils_contextpool.py",
    ),
    Mutation(
        "negative-answer-position-clamped", "a negative answer position is clamped to 0 (the CLS token: a silent "
        "\"no answer\" target), as transformers does",
        "bool((positions < 0).any())",
        "False",
        _k("tests/test_bad_input.py", "answer_positions"), where="src/contextpool_hf/heads_contextpool.py",
    ),
    Mutation(
        "encoder-outputs-unchecked", "encoder_outputs that are not the encoder's output (a bare tensor, a dict) reach "
        "the decoder unread",
        "    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or hidden.shape[-1] != width:",
        "    if False:",
        _k("tests/test_bad_input.py", "encoder_outputs"), where="src/contextpool_hf/modeling_contextpool_seq2seq.py",
    ),
    Mutation(
        "seq2seq-labels-rank-unchecked", "seq2seq labels that are not (batch, length) reach the right shift (\"too "
        "many indices\")",
        "            if not isinstance(labels, torch.Tensor) or labels.dim() != 2:  # shifted right below: (B, n) only",
        "            if False:",
        _k("tests/test_bad_input.py", "batch_of_sequences"), where="src/contextpool_hf/modeling_contextpool_seq2seq.py",
    ),
    Mutation(
        "static-history-unordered", "a chunk after decoding steps on a static cache reads the pooling ring in slot "
        "order instead of time order (the wrong distances to its inputs)",
        "        return self.pool_features.index_select(2, slots), self.pool_weights.index_select(2, slots)",
        "        return self.pool_features, self.pool_weights",
        _k("tests/test_static_cache.py", "float64"), where="src/contextpool_hf/cache_contextpool.py",
    ),
    Mutation(
        "static-chunk-slots-off", "a chunk on a static cache stores its last inputs in the ring slots of the "
        "positions before the chunk, not of their own",
        "        slots = self._ring_slots(self.pool_weights.shape[-1], new_tokens, self.pool_weights.device)",
        "        slots = self._ring_slots(self.pool_weights.shape[-1], 0, self.pool_weights.device)",
        _k("tests/test_static_cache.py", "float64"), where="src/contextpool_hf/cache_contextpool.py",
    ),
    Mutation(
        "cache-fit-unchecked", "a filled cache of another batch or another model's sizes reaches the layers (errors "
        "inside torch.cat; fewer layers read silently)",
        "        check_cache_fits(cache, *fits)",
        "        pass",
        _k("tests/test_cache_fits.py", "keys_and_values or another_batch or plain_dynamic"),
        where="src/contextpool_hf/cache_contextpool.py",
    ),
    Mutation(
        "cache-layer-count-unchecked", "a filled cache with fewer layers than the model continues its sequences in "
        "the first layers and starts new ones in the rest (silent)",
        "    if holding != num_layers:",
        "    if False:",
        _k("tests/test_cache_fits.py", "fewer or more"), where="src/contextpool_hf/cache_contextpool.py",
    ),
    Mutation(
        "seq2seq-cache-fit-unchecked", "the seq2seq decoder takes a self-attention cache of another batch or model",
        "        if past > 0 and not torch.compiler.is_compiling():",
        "        if False:",
        _k("tests/test_cache_fits.py", "seq2seq"), where="src/contextpool_hf/modeling_contextpool_seq2seq.py",
    ),
    Mutation(
        "pool-state-window-unchecked", "pooling state of a wider window (another sigma_max) is read as this "
        "layer's: a step pools over the extra slots (silent)",
        "            expected = (batch, groups, pool.radius + 1, channels)",
        "            expected = (batch, groups, ring.shape[2], channels)",
        _k("tests/test_cache_fits.py", "wider"), where="src/contextpool_hf/decoding_contextpool.py",
    ),
    Mutation(
        "pool-state-unchecked-on-steps", "a decoding step's plan is built on another configuration's pooling "
        "state without the check",
        "        self._check_pool_state(layer_cache, like)  # once per sequence",
        "        pass  # once per sequence",
        _k("tests/test_cache_fits.py", "pooling_configurations and step"), where="src/contextpool_hf/decoding_contextpool.py",
    ),
    Mutation(
        "pool-state-unchecked-on-chunks", "a chunk on a dynamic cache pools after another configuration's state "
        "without the check",
        "        self._check_pool_state(layer_cache, features)\n        weights, sigma, conv_state = self.pool.predict(hidden, keep, layer_cache.conv_state)",
        "        weights, sigma, conv_state = self.pool.predict(hidden, keep, layer_cache.conv_state)",
        _k("tests/test_cache_fits.py", "pooling_configurations and chunk and dynamic"),
        where="src/contextpool_hf/layers_contextpool.py",
    ),
    Mutation(
        "token-type-shape-unchecked", "token_type_ids (and position_ids: one shape check serves both) of another "
        "batch or length reach the embeddings' sum (a broadcast error)",
        "    if shape not in ((batch, n), (1, n), (n,)):",
        "    if False:",
        _k("tests/test_bad_input_arguments.py", "token_type"), where="src/contextpool_hf/inputs_contextpool.py",
    ),
    Mutation(
        "negative-logits-to-keep-accepted", "a negative logits_to_keep silently drops the first positions' logits",
        "not isinstance(logits_to_keep, bool) and logits_to_keep >= 0:",
        "not isinstance(logits_to_keep, bool):",
        _k("tests/test_bad_input_arguments.py", "logits_to_keep"), where="src/contextpool_hf/inputs_contextpool.py",
    ),
    Mutation(
        "problem-type-stored-before-check", "a classification batch the label check refuses still fixes "
        "config.problem_type, so every later batch of correct class ids is refused too",
        "    _check_classification_labels(problem_type, logits, labels)",
        "    config.problem_type = problem_type\n    _check_classification_labels(problem_type, logits, labels)",
        _k("tests/test_bad_input_arguments.py", "refused"), where="src/contextpool_hf/modeling_utils_contextpool.py",
    ),
    Mutation(
        "sliding-window-one-wider", "the eager/sdpa mask lets each query see one key more than its sliding window",
        "            allowed = allowed & ~allowed.tril(kv_len - q_len - window)\n        allowed = allowed[None, None]",
        "            allowed = allowed & ~allowed.tril(kv_len - q_len - window - 1)\n        allowed = allowed[None, None]",
        WINDOW_TESTS, where="src/contextpool_hf/attention_contextpool.py",
    ),
    Mutation(
        "flex-window-one-wider", "the full mask of the other backends (flex attention) is one key wider than the "
        "sliding window",
        "            allowed = allowed & ~allowed.tril(kv_len - q_len - window)\n    allowed = allowed[None, None]",
        "            allowed = allowed & ~allowed.tril(kv_len - q_len - window - 1)\n    allowed = allowed[None, None]",
        WINDOW_TESTS, where="src/contextpool_hf/attention_contextpool.py",
    ),
    Mutation(
        "static-window-one-wider", "the static cache's mask is one key wider than the sliding window",
        "(slots[None, :] > positions[:, None] - window)",
        "(slots[None, :] >= positions[:, None] - window)",
        WINDOW_TESTS, where="src/contextpool_hf/attention_contextpool.py",
    ),
    Mutation(
        "packed-documents-not-causal", "packed documents (DataCollatorWithFlattening) attend within their document "
        "but to its future tokens too",
        "same & torch.ones(n, n, dtype=torch.bool, device=same.device).tril() if causal else same",
        "same",
        ("tests/test_transformers_features.py", "tests/test_bad_input.py"), where="src/contextpool_hf/attention_contextpool.py",
    ),
    Mutation(
        "static-prefill-ignores-window", "a prompt on an empty static cache takes the plain causal kernel even when "
        "the sliding window is shorter than the prompt",
        "        and (window is None or window >= n)\n",
        "        and True\n",
        WINDOW_TESTS, where="src/contextpool_hf/attention_contextpool.py",
    ),
    Mutation(
        "pooler-without-tanh", "the BERT-style pooler leaves out its tanh",
        "torch.tanh(self.pooler(hidden[:, 0]))",
        "self.pooler(hidden[:, 0])",
        ("tests/test_convert.py",), where="src/contextpool_hf/modeling_contextpool.py",
    ),
    Mutation(
        "new-tokens-mask-misaligned", "the new tokens' padding is read from the first columns of the attention mask "
        "instead of the columns after the cache",
        "            keep_new = keep_all[:, past:] if keep_all is not None else None",
        "            keep_new = keep_all[:, :n] if keep_all is not None else None",
        ("tests/test_generation.py",), where="src/contextpool_hf/modeling_contextpool.py",
    ),
    Mutation(
        "blocks-keep-remainder", "grouping texts into blocks keeps the short last block",
        "        total = (len(stream) // block_size) * block_size",
        "        total = len(stream)",
        ("tests/test_training_counts.py",), where="src/contextpool_hf/training_data.py",
    ),
    Mutation(
        "chars-without-separator", "characters per token (bits per character) leave out each line's newline",
        '"n_chars": [len(t) + 1 for t in texts]',
        '"n_chars": [len(t) for t in texts]',
        ("tests/test_training_counts.py",), where="src/contextpool_hf/training_data.py",
    ),
    Mutation(
        "documents-run-together", "with a tokenizer without BOS, documents are grouped with no EOS between them",
        "            ids = [seq + [tokenizer.eos_token_id] for seq in ids]",
        "            ids = ids",
        ("tests/test_training_counts.py",), where="src/contextpool_hf/training_data.py",
    ),
    Mutation(
        "flops-causal-full-context", "the FLOPs estimate counts a causal model's whole n x n attention product",
        "    context = block_size / 2 if causal else block_size",
        "    context = block_size",
        ("tests/test_training_counts.py",), where="src/contextpool_hf/training_models.py",
    ),
    Mutation(
        "flops-pool-window-two-sided", "the FLOPs estimate counts a two-sided pooling window for causal pooling",
        "        window = radius + 1 if config.is_causal else 2 * radius + 1",
        "        window = 2 * radius + 1",
        ("tests/test_training_counts.py",), where="src/contextpool_hf/training_models.py",
    ),
    Mutation(
        "foreign-card-overwritten", "a push replaces a README.md on the Hub that this project did not write",
        "            card_kept = existing is not None and not is_contextpool_card(existing)",
        "            card_kept = False",
        _k("tests/test_hub.py", "card_written_by_user"), where="src/contextpool_hf/hub.py",
    ),
    Mutation(
        "private-flag-dropped", "a push asked to create a private repository creates a public one",
        "api.create_repo(repo_id, private=private, exist_ok=True)",
        "api.create_repo(repo_id, private=None, exist_ok=True)",
        _k("tests/test_hub.py", "cli_push"), where="src/contextpool_hf/hub.py",
    ),
    Mutation(
        "card-train-metrics-as-eval", "the model card lists all_results.json's training metrics (train_loss, "
        "runtimes) as evaluation results",
        'if not k.startswith(("train_", "predict_", "test_")) and _is_metric(k, v)}',
        'if _is_metric(k, v)}',
        _k("tests/test_hub.py", "eval_metrics_only"), where="src/contextpool_hf/hub_card.py",
    ),
    Mutation(
        "user-card-taken-for-ours", "a user's README.md that only tags the model contextpool (or only cites the "
        "paper) is taken for this project's card and replaced on push",
        'return "contextpool" in (card.data.tags or []) and "huang2022contextpool" in card.text',
        'return "contextpool" in (card.data.tags or []) or "huang2022contextpool" in card.text',
        _k("tests/test_hub.py", "replaceable"), where="src/contextpool_hf/hub_card.py",
    ),
    Mutation(
        "char-study-first-seed", "the character-level study reports its first seed's test bpc as the mean",
        '"test_bpc": statistics.mean(test), ',
        '"test_bpc": test[0], ',
        _k("tests/test_studies.py", "sample_std"), where="scripts/study_char_lm.py",
    ),
    Mutation(
        "lm-study-first-seed", "the language-modelling study reports its first seed as the mean",
        "return statistics.mean(values), (",
        "return values[0], (",
        _k("tests/test_studies.py", "sample_std"), where="scripts/study_lm.py",
    ),
    Mutation(
        "study-population-std", "the vision study states the population std (n) as its seed spread, not the "
        "sample std (n - 1)",
        'statistics.stdev(acc) if len(acc) > 1 else 0.0',
        'statistics.pstdev(acc) if len(acc) > 1 else 0.0',
        _k("tests/test_studies.py", "sample_std"), where="scripts/study_vision.py",
    ),
    Mutation(
        "tokenizer-pair-one-segment", "the trained tokenizer gives a sentence pair's second sequence token type 0",
        '["$B:1"]',
        '["$B:0"]',
        _k("tests/test_tokenization.py", "special_tokens"), where="src/contextpool_hf/tokenization.py",
    ),
    Mutation(
        "vit-interpolation-bilinear", "the ViT resizes its position table bilinearly for other image sizes, not "
        "bicubically as transformers' ViT",
        'mode="bicubic"',
        'mode="bilinear"',
        _k(ORACLE, "interpolates"), where="src/contextpool_hf/modeling_contextpool_vision.py",
    ),
    Mutation(
        "cross-pooling-ignores-source-padding", "the decoder's pooled cross-attention memory gives source padding "
        "pooling weight",
        "weights, sigma, _ = self.pool.predict(memory, keep)",
        "weights, sigma, _ = self.pool.predict(memory, None)",
        ("tests/test_seq2seq.py", "tests/test_seq2seq_remote.py", "tests/test_bad_input.py", ORACLE, LOGITS),
        where="src/contextpool_hf/layers_contextpool_seq2seq.py",
    ),
    Mutation(
        "llama-baseline-deeper", "--baseline llama builds a deeper model than the ContextPool model it is compared with",
        "num_hidden_layers=cp_config.num_hidden_layers, num_attention_heads=cp_config.num_attention_heads,\n            num_key_value_heads",
        "num_hidden_layers=cp_config.num_hidden_layers + 1, num_attention_heads=cp_config.num_attention_heads,\n            num_key_value_heads",
        _k("tests/test_training_counts.py", "baselines"), where="src/contextpool_hf/training_models.py",
    ),
    Mutation(
        "bert-baseline-wider-mlp", "--baseline bert builds a wider MLP than the ContextPool model it is compared with",
        "intermediate_size=cp_config.intermediate_size, hidden_act=cp_config.hidden_act,",
        "intermediate_size=2 * cp_config.intermediate_size, hidden_act=cp_config.hidden_act,",
        _k("tests/test_training_counts.py", "baselines"), where="src/contextpool_hf/training_models.py",
    ),
    Mutation(
        "accuracy-counts-ignored-labels", "the shipped accuracy metric counts the -100 positions (MLM's unmasked "
        "tokens)",
        "        keep = references != ignore_index",
        "        keep = references == references",
        ("tests/test_metrics.py",), where="src/contextpool_hf/metrics/accuracy",
    ),
    Mutation(
        "eval-metrics-not-saved", "a training run writes no eval_results.json",
        '        trainer.save_metrics("eval", metrics_eval)\n',
        "        pass\n",
        _k("tests/test_training.py", "end_to_end"), where="src/contextpool_hf/training.py",
    ),
    Mutation(
        "nan-guard-not-attached", "the scripts' Trainer runs without the non-finite-loss guard",
        "    if not any(isinstance(cb, NonFiniteLossCallback) for cb in trainer.callback_handler.callbacks):",
        "    if False:",
        ("tests/test_training.py", "tests/test_training_hardening.py"), where="src/contextpool_hf/training.py",
    ),
    Mutation(
        "time-budget-ignored", "--max_train_seconds is accepted and ignored",
        "    return [TimeBudgetCallback(model_args.max_train_seconds)] if model_args.max_train_seconds else []",
        "    return []",
        _k("tests/test_training.py", "max_train_seconds"), where="src/contextpool_hf/training.py",
    ),
    Mutation(
        "fresh-weights-unwarned", "a conversion that initialises new weights (a new task head) says nothing",
        "    if fresh:\n        warnings.warn(",
        "    if False:\n        warnings.warn(",
        ("tests/test_convert.py",), where="src/contextpool_hf/convert.py",
    ),
    Mutation(
        "generation-config-dropped", "a converted model loses its source's generation_config (decoding defaults)",
        "        target.generation_config = copy.deepcopy(source.generation_config)",
        "        pass",
        _k("tests/test_convert.py", "keeps_the_sources_dtype"), where="src/contextpool_hf/convert.py",
    ),
    Mutation(
        "base-model-drops-pooler", "a converted bare BERT model leaves out the source's pooler",
        'config.use_pooler = task == "sequence-classification" or (task == "base" and has_pooler)',
        'config.use_pooler = task == "sequence-classification"',
        ("tests/test_convert.py",), where="src/contextpool_hf/convert.py",
    ),
    Mutation(
        "converted-in-float32", "a bf16 source converts to a float32 model",
        "    target = target_class(config).to(source.dtype)",
        "    target = target_class(config)",
        _k("tests/test_convert.py", "keeps_the_sources_dtype"), where="src/contextpool_hf/convert.py",
    ),
    Mutation(
        "mean-pooling-reads-padding", "classifier_pooling='mean' averages the padding's hidden states too",
        "        return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)",
        "        return hidden.mean(1)",
        ("tests/test_sequence_heads.py",), where="src/contextpool_hf/heads_contextpool.py",
    ),
    Mutation(
        "last-token-counted-from-the-left", "classifier_pooling='last' without a mask takes the number of real "
        "tokens minus one as the last one (wrong with left padding)",
        "        last = (is_real * positions).argmax(-1)",
        "        last = is_real.sum(-1) - 1",
        ("tests/test_sequence_heads.py",), where="src/contextpool_hf/heads_contextpool.py",
    ),
    Mutation(
        "static-cache-exact-fit-refused", "a static cache refuses the tokens that exactly fill it",
        "        if filled + n > max_len:",
        "        if filled + n >= max_len:",
        ("tests/test_static_cache.py",), where="src/contextpool_hf/inputs_contextpool.py",
    ),
    Mutation(
        "absolute-positions-exact-fit-refused", "learned positions refuse a sequence of exactly "
        "max_position_embeddings tokens",
        "        if limited and past + n > max_len:",
        "        if limited and past + n >= max_len:",
        ("tests/test_sequence_heads.py",), where="src/contextpool_hf/inputs_contextpool.py",
    ),
    Mutation(
        "push-branch-not-created", "a push to a new branch (revision) does not create it first",
        "            api.create_branch(repo_id, branch=revision, exist_ok=True)",
        "            pass",
        ("tests/test_hub.py",), where="src/contextpool_hf/hub.py",
    ),
    Mutation(
        "seq2seq-position-offset-dropped", "learned seq2seq positions ignore BART's position offset",
        "            positions = self.embed_positions(position_ids + self.offset)",
        "            positions = self.embed_positions(position_ids)",
        ("tests/test_seq2seq.py",), where="src/contextpool_hf/layers_contextpool_seq2seq.py",
    ),
    Mutation(
        "vit-mean-pooling-takes-cls", "the ViT's classifier_pooling='mean' averages the CLS token with the patches",
        'pooled = sequence[:, 0] if self.config.classifier_pooling == "cls" else sequence[:, 1:].mean(1)',
        'pooled = sequence[:, 0] if self.config.classifier_pooling == "cls" else sequence.mean(1)',
        _k("tests/test_vision.py", "pooler_output_is"), where="src/contextpool_hf/modeling_contextpool_vision.py",
    ),
]


@dataclasses.dataclass
class Result:
    name: str
    outcome: str
    seconds: float
    file: str | None
    tests: str
    issue_table: bool
    detail: str = ""


def _copy_tree(dest: Path) -> None:
    """The working tree as git sees it (tracked + untracked, not ignored); data/ is linked, not copied."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, listed):
        source = ROOT / rel
        if source.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)
    if (ROOT / "data").is_dir():
        (dest / "data").symlink_to(ROOT / "data", target_is_directory=True)


def _find_anchor(copy: Path, mutation: Mutation) -> tuple[Path | None, str]:
    target = copy / mutation.where
    files = [target] if target.is_file() else sorted(target.rglob("*.py"))
    hits = [(f, f.read_text(encoding="utf-8").count(mutation.old)) for f in files]
    hits = [(f, n) for f, n in hits if n]
    total = sum(n for _, n in hits)
    if total != mutation.count or len(hits) != 1:
        where = ", ".join(f"{f.relative_to(copy)} x{n}" for f, n in hits) or "nowhere"
        return None, f"anchor found {total} times ({where}); expected {mutation.count} in one file under {mutation.where}"
    return hits[0][0], ""


def _env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a restored file must not be shadowed by a stale .pyc
    return env


def _pytest(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, float, str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-header", *tests]
    start = time.perf_counter()
    try:
        run = subprocess.run(cmd, cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, time.perf_counter() - start, "timeout"
    tail = (run.stdout + run.stderr).strip().splitlines()
    return run.returncode, time.perf_counter() - start, tail[-1] if tail else ""


def _check_import_path(copy: Path) -> None:
    probe = subprocess.run([sys.executable, "-c", "import contextpool_hf; print(contextpool_hf.__file__)"],
                           cwd=copy, env=_env(copy), capture_output=True, text=True, check=True)
    location = Path(probe.stdout.strip()).resolve()
    if copy.resolve() not in location.parents:
        raise SystemExit(f"the copy's package is not the one imported ({location}); refusing to run")


def run(mutations: list[Mutation], timeout: float, baseline: bool) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as tmp:
        copy = Path(tmp) / "repo"
        copy.mkdir()
        _copy_tree(copy)
        _check_import_path(copy)
        base_ok: dict[tuple[str, ...], tuple[bool, str]] = {}
        for mutation in mutations:
            file, problem = _find_anchor(copy, mutation)
            rel = str(file.relative_to(copy)) if file else None
            selection = " ".join(shlex.quote(t) for t in mutation.tests)
            if file is None:
                results.append(Result(mutation.name, "STALE", 0.0, rel, selection, mutation.issue_table, problem))
                print(f"{mutation.name}: STALE ({problem})", flush=True)
                continue
            if baseline and mutation.tests not in base_ok:
                rc, seconds, tail = _pytest(copy, mutation.tests, timeout)
                base_ok[mutation.tests] = (rc == 0, f"unmutated: rc {rc}, {tail} ({seconds:.0f} s)")
                print(f"baseline {selection}: rc {rc} ({seconds:.0f} s) {tail}", flush=True)
            if baseline and not base_ok[mutation.tests][0]:
                results.append(Result(mutation.name, "invalid", 0.0, rel, selection, mutation.issue_table,
                                      base_ok[mutation.tests][1]))
                continue
            original = file.read_text(encoding="utf-8")
            try:
                file.write_text(original.replace(mutation.old, mutation.new), encoding="utf-8")
                rc, seconds, tail = _pytest(copy, mutation.tests, timeout)
            finally:
                file.write_text(original, encoding="utf-8")
            outcome = {0: "SURVIVED", 1: "killed"}.get(rc, "error")
            results.append(Result(mutation.name, outcome, round(seconds, 1), rel, selection, mutation.issue_table,
                                  tail))
            print(f"{mutation.name}: {outcome} ({seconds:.0f} s) {tail}", flush=True)
    return results


def table(results: list[Result]) -> str:
    lines = ["| mutation | issue-14 table | outcome | seconds | file | tests |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {'yes' if r.issue_table else ''} | {r.outcome} | {r.seconds:g} | "
                     f"{r.file or '-'} | `{r.tests}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated mutation names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--anchors", action="store_true", help="only check that every anchor is found, run nothing")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per pytest run")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the unmutated run of each test selection")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "mutation_check.json"),
                        help="JSON results file ('' for none)")
    args = parser.parse_args(argv)
    chosen = MUTATIONS
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - {m.name for m in MUTATIONS})
        if unknown:
            parser.error(f"unknown mutation(s) {unknown}; --list shows them")
        chosen = [m for m in MUTATIONS if m.name in names]
    if args.list:
        for m in chosen:
            print(f"{m.name:34} {'[issue 14] ' if m.issue_table else ''}{m.what}")
        return 0
    if args.anchors:
        stale = 0
        for m in chosen:
            file, problem = _find_anchor(ROOT, m)
            stale += file is None
            print(f"{m.name:34} {file.relative_to(ROOT) if file else 'STALE: ' + problem}")
        return 1 if stale else 0
    start = time.perf_counter()
    results = run(chosen, args.timeout, args.baseline)
    print("\n" + table(results))
    survived = [r.name for r in results if r.outcome == "SURVIVED"]
    bad = [r.name for r in results if r.outcome in ("STALE", "invalid", "error")]
    print(f"\nkilled {sum(r.outcome == 'killed' for r in results)}/{len(results)}; survived {survived or 'none'}; "
          f"stale/invalid/error {bad or 'none'}")
    if args.output:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        record = {
            "command": shlex.join(["python", "scripts/mutation_check.py", *(sys.argv[1:] if argv is None else argv)]),
            "baseline": args.baseline,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit,
            "wall_seconds": round(time.perf_counter() - start, 1),
            "fields": {"outcome": "killed | SURVIVED | STALE | invalid | error", "file": "where the anchor was found",
                       "tests": "pytest selection run on the mutated copy", "detail": "pytest's last line or why"},
            "results": [dataclasses.asdict(r) for r in results],
        }
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.output}")
    return 1 if (survived or bad) else 0


if __name__ == "__main__":
    sys.exit(main())
