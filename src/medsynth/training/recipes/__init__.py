"""Built-in recipes, one module each; `medsynth.training.recipe.RECIPE_MODULES` lists them."""
