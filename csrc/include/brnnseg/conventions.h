// Shape letters and layout rules shared by every kernel (CPU, CUDA, simulator).
//
//   N, C, H, W  feature map (batch, channels, height, width)
//   hid         hidden size of ONE direction; outputs carry 2*hid channels
//   G           gates per cell: GRU 3 (r, z, n), LSTM 4 (i, f, g, o) -- PyTorch's order
//   S           saved floats per unit and step for backward: GRU 4 (r, z, n, hn), LSTM 5 (i, f, g, o, c)
//   P = N*H*W   positions; every internal buffer is "position-major": row p = (n*H + h)*W + w,
//               features contiguous (the layout of a channels_last NCHW tensor)
//   axis        3: sweep along W, one line per (n, h)  ("rows")
//               2: sweep along H, one line per (n, w)  ("cols")
//   direction   0 runs t = 0..T-1, 1 runs t = T-1..0; its hidden state lands in
//               output channels [d*hid, (d+1)*hid), the order of nn.GRU(bidirectional=True)
//
// Weights are stacked per direction: w_ih (2, G*hid, C), w_hh (2, G*hid, hid), biases (2, G*hid).
#pragma once
