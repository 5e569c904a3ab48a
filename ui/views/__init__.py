"""The dashboard's tabs, one module each; ui/app.py assembles them."""
