-- An MPP challenge is paid once, whoever pays it. A payment's replay key names its payer (an
-- EIP-3009 authorization is used once per payer on chain), so two wallets could each pay one
-- challenge; its nonce, the hash of the challenge's id and realm, is made unique among MPP
-- payments across payers, and the second reservation is refused as a replay.
CREATE UNIQUE INDEX payments_mpp_challenge_once ON payments (chain, asset, nonce) WHERE method = 'mpp-evm-charge';
