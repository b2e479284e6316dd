"""A minimal Django project: one view returning ``HttpResponse("Hello, world!")``."""
