from twisted.application.service import ServiceMaker

talos_images = ServiceMaker(
    "talos-images", "talos_twisted.tap", "Serve raw Talos Linux disk images from the Talos Image Factory", "talos-images"
)
