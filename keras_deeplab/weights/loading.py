"""Loading `.weights.h5` files and named presets (placeholder; being written)."""


def resolve_weights(weights):
    return weights


def load_weights(model, weights):
    model.load_weights(resolve_weights(weights))
