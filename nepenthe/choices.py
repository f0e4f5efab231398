"""The valid values of every option that takes one of a list: here, so that config validation reads them without
importing the code that implements them (each implementing module imports its list from here)."""

ZERO_STATES = ("off", "on", "drop")  # entropy.zero_state: what an exact zero of z counts as (docs/DESIGN.md step 1)
LAYER_MEANS = ("nonconstant", "all")  # entropy.layer_mean (step 3)
POOLINGS = ("dataset", "batch")  # entropy.pooling (step 3)
LAYOUTS = ("auto", "channels_first", "channels_last")  # where a unit's neurons are
PROBE_SPLITS = ("train", "train_aug", "val", "test")  # entropy.split
ROUNDINGS = ("nearest", "floor")  # pruning.rounding of the entropy budget (step 5)
ORDERS = ("by_val_mswd", "deepest_first")  # pruning.order of LaCoOT's removals (step 11)
SCHEDULES = ("cosine", "multistep", "constant")  # train.schedule
OPTIMIZERS = ("sgd", "adam", "adamw")  # train.optimizer
PRECISIONS = ("fp32", "bf16")  # hardware.precision (bf16: autocast)
DEVICES = ("auto", "cpu", "cuda")  # hardware.device
MERGES = ("cost", "depth", "always", "latency", "never", "approximate")  # collapse.merge (step 9)
RUNTIMES = ("eager", "compile", "onnxruntime")  # collapse.runtimes: where latency is measured
LOGGERS = ("none", "wandb")  # logger.name
LOGGER_MODES = ("offline", "online", "disabled")  # logger.mode
