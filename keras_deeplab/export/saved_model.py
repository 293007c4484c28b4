"""SavedModel export (placeholder; being written)."""


def to_saved_model(model, export_dir, **kwargs):
    raise NotImplementedError


def verify_saved_model(model, export_dir, images, **kwargs):
    raise NotImplementedError
