"""The recipe name checks of compress's sections (:data:`edgeslim.recipe.RECIPE_CHECKS`): the pretrained source,
the dataset and the class names a recipe's data section names (for datasets whose classes are known without the
images). Imported by the recipe's check on its first run, so the recipe imports no stage."""

from __future__ import annotations

from ..recipe import RECIPE_CHECKS, Recipe
from .data import DATASETS, check_data_section
from .sources import SOURCES


@RECIPE_CHECKS.register("model")
def check_model_section(recipe: Recipe) -> None:
    SOURCES.canonical(recipe.model.source.split(":", 1)[0])


@RECIPE_CHECKS.register("data")
def check_data_names(recipe: Recipe) -> None:
    DATASETS.canonical(recipe.data.dataset.split(":", 1)[0])
    check_data_section(recipe.data)  # class names, for datasets whose classes are known without the images
