"""MLX graph code: the KV caches (`kv_cache`), the LM's step (`lm_step`, its layers in
`lm_layers`, LmGen's token bookkeeping on the host in `host_tokens`) and Mimi's streaming
transformer, encoder and decoder (`mimi`).  Nothing here imports MLX at module level."""
