from twisted.application.service import ServiceMaker

talos_fake_factory = ServiceMaker(
    "talos-fake-factory",
    "talos_twisted.testing.fakefactory.plugin",
    "A fake Talos Image Factory serving deterministic pseudo disk images (tests, offline demos)",
    "talos-fake-factory",
)
