"""ImageNet backbone weights (placeholder; being written)."""


def load_backbone_weights(backbone_model, backbone_name, weights):
    raise NotImplementedError("backbone_weights is being written")
