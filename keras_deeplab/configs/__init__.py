"""Training recipes shipped with the package (YAML files beside this module).

`list_recipes()` names them; `recipe_path(name_or_path)` turns a recipe name or a config file
path into the file to load, so the same `--config shapes_demo` works from a checkout and from
an installed wheel. A checkout also has them under the top-level `configs/` (a symlink).

Example:
    ```python
    from keras_deeplab.configs import list_recipes, recipe_path

    print(list_recipes())            # ['ade20k_deeplabv3plus_xception65', ..., 'shapes_demo', ...]
    path = recipe_path("shapes_demo")  # .../keras_deeplab/configs/shapes_demo.yaml
    ```
"""

from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent
_SUFFIXES = (".yaml", ".yml")


def list_recipes():
    """Names of the shipped recipes, sorted (e.g. `"shapes_demo"`)."""
    return sorted(p.stem for p in RECIPES_DIR.iterdir() if p.suffix in _SUFFIXES and p.is_file())


def recipe_path(name_or_path):
    """The config file for a shipped recipe name or a path to a config file.

    Accepts an existing file path (returned as is), a recipe name (`"shapes_demo"` or
    `"shapes_demo.yaml"`), or the checkout-relative `configs/<recipe>.yaml` from any working
    directory (resolved to the shipped copy when no such file exists there).

    Args:
        name_or_path: a `str` or `os.PathLike`.

    Returns:
        A `pathlib.Path` to an existing file.

    Raises:
        ValueError: unknown recipe or missing file; the message lists the shipped recipes.

    Example:
        ```python
        recipe_path("shapes_demo").name  # 'shapes_demo.yaml'
        ```
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_dir():
        raise ValueError(
            f"Config {str(name_or_path)!r} is a directory; pass a YAML/JSON config file or "
            f"one of the shipped recipes: {', '.join(list_recipes())}."
        )
    stem = path.stem if path.suffix in _SUFFIXES else path.name
    bare = len(path.parts) == 1 or (len(path.parts) == 2 and path.parts[0] == "configs")
    if bare and path.suffix in (*_SUFFIXES, ""):
        for suffix in _SUFFIXES:
            candidate = RECIPES_DIR / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    raise ValueError(
        f"No config file or shipped recipe {str(name_or_path)!r}: shipped recipes are "
        f"{', '.join(list_recipes())} (pass one of these names, e.g. --config shapes_demo, "
        "or the path of an existing YAML/JSON config file)."
    )


__all__ = ["RECIPES_DIR", "list_recipes", "recipe_path"]
