"""The model: what a trained VAE is, apart from how it was trained or how it is run.

- `vae`: the convolutional VAE (ConvVAE), its encoder and decoder, read bottom-up (torch).
- `objective`: the negative ELBO in parts and the likelihoods p(x|z) it uses (torch).
- `likelihood_np`: the likelihoods' numpy half (the floor a perfect reconstruction still costs,
  the discretised logistic's bins), shared with the torch-free scores and the codec.
Nothing is imported here, so `vaekit.model.likelihood_np` never pulls in torch.
"""
