"""napari plugin (npe2, manifest ``napari.yaml``): a structure reader, the demo protein as sample
data, and widgets that colour, list and plot SAE feature activations through :mod:`interplm_plugins.core`."""
