"""Official TF1 checkpoint converter (placeholder; being written)."""


def load_tf_checkpoint(ckpt_prefix, model):
    raise NotImplementedError("load_tf_checkpoint is being written")
