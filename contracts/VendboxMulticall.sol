// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.26;

/// @title VendboxMulticall
/// @notice `aggregate3`, with the ABI that the Multicall3 deployed at
/// 0xcA11bde05977b3631167028862bE2a173976CA11 on public chains has: each call
/// is made in turn, and one whose `allowFailure` is true may revert without
/// reverting the others. vendbox settles several EIP-3009 authorizations in one
/// transaction through it. Public chains already have Multicall3 at that
/// address; `vendbox dev` puts this contract's code there on its local chain.
/// It holds no state and no ether, and has no owner.
contract VendboxMulticall {
    struct Call3 {
        address target;
        bool allowFailure;
        bytes callData;
    }

    struct Result {
        bool success;
        bytes returnData;
    }

    /// @notice Calls each `calls[i].target` with its data, in order. A call that
    /// reverts reverts the whole transaction unless its `allowFailure` is set.
    function aggregate3(Call3[] calldata calls) external payable returns (Result[] memory results) {
        require(msg.value == 0, "VendboxMulticall: no value");
        uint256 length = calls.length;
        results = new Result[](length);
        for (uint256 i = 0; i < length; ++i) {
            Call3 calldata call = calls[i];
            (bool success, bytes memory returnData) = call.target.call(call.callData);
            if (!success && !call.allowFailure) {
                revert("VendboxMulticall: call failed");
            }
            results[i] = Result(success, returnData);
        }
    }
}
