"""Test helpers shipped with talos-images: a fake Talos Image Factory."""
