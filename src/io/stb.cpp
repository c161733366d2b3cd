// stb's implementations (PNG decoding, PNG and JPEG writing), on their own: stb shifts signed
// ints into the sign bit and copies zero bytes from null pointers (undefined by the letter,
// harmless with every compiler), so the fuzz build leaves those two checks out here and keeps
// the rest: AddressSanitizer and every other undefined-behaviour check. Its warnings are
// stb's own and differ with each compiler (GCC 14 sees maybe-uninitialized ones GCC 12 does
// not), so this file is compiled without warnings (CMakeLists.txt).
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG  // (JPEG is decoded by libjpeg: image_io.cpp)
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image.h>
#include <stb_image_write.h>
