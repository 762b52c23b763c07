"""deploy/modal_app.py and deploy/cloud/: the Modal deployment."""
