"""Built-in recipes, one module each; every module here is imported when the recipe registry is first used."""
