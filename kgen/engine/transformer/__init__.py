"""The decoder engine over transformers checkpoints: LLaMA models through our own forward, others through
transformers' forward, both over one KV cache type.

``policy`` (which dtype each phase runs in), ``matrices`` (how a matrix is stored: one strategy object per
format), ``weights`` (model shape, extraction, building a copy in a format), ``forward`` (the one forward
pass), ``cache`` (the KV cache), ``llama`` / ``foreign`` (the two runners), ``compat`` (transformers
versions and loading).
"""
