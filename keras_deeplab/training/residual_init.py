"""Zero-initialised residual branches: every residual block starts as the identity.

The last BatchNorm of each residual branch gets gamma 0, so at step 0 a block passes its
shortcut through unchanged and the network trains as a shallower one at first (Goyal et al.,
"Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", arXiv:1706.02677, section 5.1;
torchvision's `zero_init_residual`, timm's `zero_init_last`). For training from random
weights: set `model.zero_init_residual: true` in a training config.

Example:
    ```python
    model = keras_deeplab.create_model("deeplabv3plus_mobilenetv2", num_classes=5,
                                       backbone="mobilenetv2_dm05")
    names = zero_init_residual(model)  # the 10 `expanded_conv_*_project_BatchNorm` layers
    ```
"""

import keras

from keras_deeplab import _compat


def _graph_branch_ends(functional):
    """The BatchNorms ending a residual branch in one functional graph (not nested ones)."""
    nodes = _compat.graph_nodes(functional)
    producer = {id(tensor): node for node in nodes for tensor in node.outputs}

    def ancestors(tensor):  # ids of the nodes `tensor` depends on, its producer included
        seen, stack = set(), [tensor]
        while stack:
            node = producer.get(id(stack.pop()))
            if node is not None and id(node) not in seen:
                seen.add(id(node))
                stack.extend(node.input_tensors)
        return seen

    ends = []
    for node in nodes:
        inputs = node.input_tensors
        if not isinstance(node.operation, keras.layers.Add) or len(inputs) != 2:
            continue
        first, second = (ancestors(tensor) for tensor in inputs)
        own = len(first - second), len(second - first)
        if own[0] == own[1]:
            continue
        branch = producer.get(id(inputs[0] if own[0] > own[1] else inputs[1]))
        if branch is not None and isinstance(branch.operation, keras.layers.BatchNormalization):
            ends.append(branch.operation)
    return ends


def residual_branch_ends(model):
    """The BatchNorm layers that end a residual branch (backbone and heads).

    A residual `Add` has two inputs: the shortcut (the block input, or a projection of it)
    and the branch, the input computed by more operations of its own. The branch's producer
    counts when it is a `BatchNormalization`.
    """
    graphs = [model, *_compat.all_layers(model)]
    return [
        layer
        for graph in graphs
        if _compat.is_functional(graph)
        for layer in _graph_branch_ends(graph)
    ]


def zero_init_residual(model):
    """Sets gamma to 0 in the BatchNorm ending each residual branch; returns their names.

    Raises:
        ValueError: the model has no residual block ending in BatchNorm (e.g. a VGG backbone).
    """
    ends = residual_branch_ends(model)
    if not ends:
        raise ValueError(
            f"{model.name} has no residual block ending in BatchNormalization (VGG backbones "
            "and models without a backbone have none); remove model.zero_init_residual."
        )
    for layer in ends:
        layer.gamma.assign(keras.ops.zeros_like(layer.gamma))
    return [layer.name for layer in ends]
