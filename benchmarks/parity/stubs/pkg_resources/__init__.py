"""Stand-in for `pkg_resources.resource_filename`, imported by `refinenet.helpers`."""

import importlib.util
import os


def resource_filename(package, resource):
    spec = importlib.util.find_spec(package)
    return os.path.join(os.path.dirname(spec.origin), resource)
