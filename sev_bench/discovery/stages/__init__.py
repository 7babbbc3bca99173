"""The circuit discovery's stages, one module each, in the order `sev_bench.discovery.circuit` runs them:
activations, heads, sublayers, validation (each cached in `<output dir>/stages/`), then integration.
`job` holds what they share: the job's inputs and the stage-table entry type."""
