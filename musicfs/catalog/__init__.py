"""Publishing a library's index into one of its origins, and mounting other machines from it."""
