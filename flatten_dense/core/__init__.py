"""What every task builds on: config loading and validation, optimiser and schedules, the task base
and its spec, shared data plumbing (samplers, collate, image files) and picture helpers."""
