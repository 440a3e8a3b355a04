"""molmofleet policy: the MolmoAct2 model library (no robots or Redis; sockets only in the policy server,
serving.py; torch, transformers, tokenizers, safetensors, numpy, pyzmq and prometheus-client there).

    config.py             MolmoAct2Config (mirrors the released config.json) with tiny() / molmoact2() presets
    prompt_tokenizer.py   text vocabulary: byte-level tokenizer + state/action/depth special tokens
    normalization.py      per-embodiment norm_stats.json (q01/q99 -> [-1, 1])
    openfast.py           OpenFAST action tokenizer (DCT, scale, round, byte-level BPE)
    processor.py          PolicySample and collate: the input transform actors and learner share
    vision.py             SigLIP2 encoder + 2x2 attention pooling + SwiGLU connector
    backbone.py           Qwen3 decoder, image-bidirectional attention mask, KV-cache PrefixState
    action_expert.py      flow-matching DiT, block i cross-attends LLM layer i's KV
    modeling_molmoact2.py MolmoAct2Policy: loss, predict_actions, fine-tuning modes
    checkpoint.py         our checkpoints, the released HF layout, trainable subsets for hot swap
    released_layout.py    released parameter names and config fields, mapped onto ours
    depth.py              MolmoThink depth tokens: DepthConfig and the metric-depth quantiser (128 codes, 10x10)
    molmothink.py         adaptive-depth inference: changed-cell detection, per-robot caches, full/adaptive/none
    protocol.py           the policy-serving wire protocol (msgpack), shared with actors/policy_client.py
    serving.py            PolicyServer: ZeroMQ ROUTER, dynamic batching, per-robot caches (the one socket owner)
    serving_versions.py   versions side by side (frozen tensors shared), champion, per-robot assignment
    serving_metrics.py    the server's Prometheus metrics and /metrics + /healthz endpoint
"""
