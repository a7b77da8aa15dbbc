"""edgetl's training side: the dataset layer, the backbone registry and transfer learning."""
