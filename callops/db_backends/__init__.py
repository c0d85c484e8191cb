"""Django database backends with this project's adjustments."""
