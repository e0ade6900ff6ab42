"""The recipe name check of the profile section (:data:`edgeslim.recipe.RECIPE_CHECKS`): the runtime backends it
times on. Imported by the recipe's check on its first run, so the recipe imports no stage."""

from __future__ import annotations

from ..recipe import RECIPE_CHECKS, Recipe
from .base import BACKENDS


@RECIPE_CHECKS.register("profile")
def check_profile_section(recipe: Recipe) -> None:
    for b in recipe.profile.backends:
        BACKENDS.canonical(b)
