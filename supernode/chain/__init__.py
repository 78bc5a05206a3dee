"""EVM chain access (web3 AsyncWeb3): balances, blocks, and later payments."""
