"""The web role's routes: one blueprint module per concern, wired by app.create_app()."""
